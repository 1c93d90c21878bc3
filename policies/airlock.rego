# Airlock's default policy: one decision per request.
#
# Input: the document described in docs/policy-input.md.
# Data:  data.apps (apps.yaml), data.budgets (budgets.yaml), data.prices (prices.yaml).
# Entry point: data.airlock.decision.
package airlock

# The app's policy entry; undefined for an app not listed in data.apps.
app := data.apps.apps[input.app.id]

known_app if app

# A finding blocks when its type is blocked for every app or for this app,
# or when the redaction rule itself said "block". (A function, not a set of
# blocked types: building that set on every request cost more than the rest.)
blocked(f) if f.type in data.apps.defaults.blocked_findings

blocked(f) if f.type in app.blocked_findings

blocked(f) if f.action == "block"

# Reasons to deny. Each reason is a stable string the decision record carries.
deny contains "unknown_app" if not known_app

deny contains sprintf("model_not_allowed:%s", [input.request.model]) if {
	known_app
	count(app.models) > 0
	not input.request.model in app.models
}

deny contains sprintf("finding_blocked:%s", [f.type]) if {
	some f in input.findings
	f.count > 0
	blocked(f)
}

deny contains "method_not_allowed" if not input.request.method in {"POST", "GET"}

# Monitor mode: the app is known and its entry says so. It records the
# would-be decision but lets the request through.
default monitor := false

monitor if app.mode == "monitor"

would_allow := count(deny) == 0

default allow := false

allow := would_allow if not monitor

allow := true if monitor

# Overrides the proxy honours. Empty means "no override".
# (Complete rules with defaults: the bytecode VM does not compile partial
# object rules with constant keys.)
default redaction_override := {}

redaction_override := app.redaction if app.redaction

default models_allowed := []

models_allowed := app.models if app.models

# Soft-limit flags pass through as warnings; they never deny.
warnings contains sprintf("budget_soft_limit:%s", [b]) if some b in input.budget.soft_exceeded

decision := {
	"allow": allow,
	"reasons": deny,
	"monitor": monitor,
	"would_allow": would_allow,
	"overrides": {"redaction": redaction_override, "models_allowed": models_allowed},
	"warnings": warnings,
}
