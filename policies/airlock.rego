# Airlock's default policy: one decision per request.
#
# Input: the document described in docs/policy-input.md.
# Data:  data.apps (data/apps.yaml); data.budgets and data.prices are there
#        too, but budgets are enforced before the policy runs.
# Entry point: data.airlock.decision.
#
# Written for the bytecode VM's cost model (one decision must stay under
# 10 µs): every reference to another rule is a call, so the app's entry is
# looked up in data directly rather than through a helper rule, and the
# decision is assembled in one rule body.
package airlock

# Reasons to deny. Each is a stable string that goes to the decision record.

# An app the platform does not know gets nothing.
deny contains "unknown_app" if not data.apps.apps[input.app.id]

# A known app may only use the models on its list (no list: any model).
deny contains sprintf("model_not_allowed:%s", [input.request.model]) if {
	models := data.apps.apps[input.app.id].models
	count(models) > 0
	not input.request.model in models
}

# Finding types blocked for every app plus those blocked for this app.
# (object.get: a missing list must not make the whole rule undefined.)
blocked_types := array.concat(
	object.get(object.get(data.apps, "defaults", {}), "blocked_findings", []),
	object.get(object.get(data.apps.apps, input.app.id, {}), "blocked_findings", []),
)

deny contains sprintf("finding_blocked:%s", [f.type]) if {
	some f in input.findings
	f.count > 0
	f.type in blocked_types
}

# A finding the redaction rule itself said to block.
deny contains sprintf("finding_blocked:%s", [f.type]) if {
	some f in input.findings
	f.count > 0
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
		"redaction": object.get(app, "redaction", {}),
		# Models this app may use ([] = no list).
		"models_allowed": object.get(app, "models", []),
	},
	"warnings": warnings,
} if {
	app := object.get(data.apps.apps, input.app.id, {})
	reasons := deny
	monitor := object.get(app, "mode", "enforce") == "monitor"
	would_allow := count(reasons) == 0

	# allow = monitor or would_allow, without a helper rule.
	allow := {true: true, false: would_allow}[monitor]
}
