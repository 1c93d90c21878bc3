# Airlock's default policy: one decision per request.
#
# Input: the document described in docs/policy-input.md.
# Data:  data.apps (data/apps.yaml). The loader fills in every app's fields
#        (mode, models, redaction) and merges defaults.blocked_findings into
#        each app's blocked_findings, so rules read them directly.
#        data.budgets and data.prices are there too; budgets are enforced
#        before the policy runs.
# Entry point: data.airlock.decision.
#
# Written for the bytecode VM's cost model (one decision must stay under
# 10 µs): rule references, builtin calls and loops over the findings each
# cost a few thousand VM instructions, so there are few of each.
package airlock

# The app's entry; for an app not in data.apps, an empty one.
default app := {"mode": "enforce", "models": [], "blocked_findings": [], "redaction": {}}

app := data.apps.apps[input.app.id]

# Reasons to deny. Each is a stable string that goes to the decision record.

# An app the platform does not know gets nothing.
deny contains "unknown_app" if not data.apps.apps[input.app.id]

# A known app may only use the models on its list (empty list: any model).
deny contains sprintf("model_not_allowed:%s", [input.request.model]) if {
	models := app.models
	count(models) > 0
	not input.request.model in models
}

# A finding of a type blocked for this app (its own list plus the defaults).
# Findings in the input always have count >= 1.
deny contains sprintf("finding_blocked:%s", [f.type]) if {
	blocked := app.blocked_findings
	some f in input.findings
	f.type in blocked
}

# A finding the redaction rule itself said to block.
deny contains sprintf("finding_blocked:%s", [f.type]) if {
	some f in input.findings
	f.action == "block"
}

# Inference APIs are POST (and GET for model lists). Two comparisons, not a
# set literal: a literal set is built on every evaluation.
deny contains "method_not_allowed" if {
	input.request.method != "POST"
	input.request.method != "GET"
}

# Notes that never deny: soft budget limits crossed by this request.
warnings contains sprintf("budget_soft_limit:%s", [b]) if some b in input.budget.soft_exceeded

# The answer. In monitor mode (apps.<id>.mode: monitor) the request passes
# and `reasons` is the decision the policy would have made.
decision := {
	"allow": allow,
	"reasons": reasons,
	"monitor": monitor,
	"would_allow": would_allow,
	"overrides": {
		# Redaction action per finding type for this app ({} = the rules' own).
		"redaction": a.redaction,
		# Models this app may use ([] = no list).
		"models_allowed": a.models,
	},
	"warnings": warnings,
} if {
	a := app
	reasons := deny
	monitor := a.mode == "monitor"
	would_allow := count(reasons) == 0

	# allow = monitor or would_allow, without a helper rule.
	allow := {true: true, false: would_allow}[monitor]
}
