# Unit tests for airlock.rego: `airlock policy test policies/` runs every
# test_ rule; each must evaluate to true.
package airlock_test

import data.airlock

req(app, model) := {
	"app": {"id": app, "cgroup_id": 1, "pid": 1},
	"destination": {"origin": "10.0.0.1:443", "gateway": "openai", "provider": "openai"},
	"request": {"method": "POST", "path": "/v1/chat/completions", "model": model, "stream": false},
	"tokens": {"prompt": 10, "source": "tokenizer", "max_output": 100},
	"findings": [],
	"budget": {"remaining": {}, "soft_exceeded": []},
}

with_finding(r, type, action) := object.union(r, {"findings": [{"type": type, "action": action, "count": 1}]})

test_known_app_allowed if {
	d := airlock.decision with input as req("support-bot", "gpt-4o-mini")
	d.allow
	count(d.reasons) == 0
}

test_unknown_app_denied if {
	d := airlock.decision with input as req("stranger", "gpt-4o-mini")
	not d.allow
	"unknown_app" in d.reasons
}

test_model_not_in_allow_list_denied if {
	d := airlock.decision with input as req("summarizer", "gpt-4o")
	not d.allow
	"model_not_allowed:gpt-4o" in d.reasons
}

test_app_blocked_finding_denies if {
	d := airlock.decision with input as with_finding(req("support-bot", "gpt-4o"), "card", "mask")
	not d.allow
	"finding_blocked:card" in d.reasons
}

test_default_blocked_finding_denies_every_app if {
	d := airlock.decision with input as with_finding(req("summarizer", "claude-sonnet-4-5"), "private_key", "mask")
	not d.allow
	"finding_blocked:private_key" in d.reasons
}

test_redaction_block_action_denies if {
	d := airlock.decision with input as with_finding(req("summarizer", "claude-sonnet-4-5"), "email", "block")
	not d.allow
}

test_masked_finding_allowed if {
	d := airlock.decision with input as with_finding(req("summarizer", "claude-sonnet-4-5"), "email", "mask")
	d.allow
}

test_monitor_allows_but_records if {
	d := airlock.decision with input as req("playground", "gpt-4o")
	d.allow
	d.monitor
	not d.would_allow
	"model_not_allowed:gpt-4o" in d.reasons
}

test_redaction_override_for_app if {
	d := airlock.decision with input as req("summarizer", "claude-sonnet-4-5")
	d.overrides.redaction.phone == "hash"
}

test_soft_limit_is_a_warning_not_a_deny if {
	r := object.union(req("support-bot", "gpt-4o"), {"budget": {"remaining": {}, "soft_exceeded": ["tokens_per_minute"]}})
	d := airlock.decision with input as r
	d.allow
	"budget_soft_limit:tokens_per_minute" in d.warnings
}

test_unknown_app_denied_even_if_data_changes if {
	d := airlock.decision with input as req("new-app", "gpt-4o") with data.apps.apps as {}
	not d.allow
}

test_app_blocked_finding_with_mocked_data if {
	# A test that replaces data.apps gives entries as the loader serves them:
	# every field present, defaults already merged into blocked_findings.
	apps := {"apps": {"x": {"mode": "enforce", "models": [], "blocked_findings": ["ssn"], "redaction": {}}}}
	d := airlock.decision with input as with_finding(req("x", "any"), "ssn", "mask") with data.apps as apps
	not d.allow
	"finding_blocked:ssn" in d.reasons
}

test_default_blocked_types_merged_into_app if {
	"private_key" in data.apps.apps["support-bot"].blocked_findings
	"card" in data.apps.apps["support-bot"].blocked_findings
}
