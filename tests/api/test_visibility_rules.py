"""The tenant view of errors, rule by rule (the server-level tests are in tests/auth/test_visibility.py)."""

from __future__ import annotations

import json

from comfyflow.core.visibility import public_error

BACKEND = "http://10.1.2.3:8188"
EXECUTION = {
    "code": "EXECUTION_ERROR",
    "message": f"node 5 (KSampler) failed: RuntimeError at /opt/comfy/nodes.py on {BACKEND}",
    "details": {"node_id": "5", "node_type": "KSampler", "exception_type": "RuntimeError",
                "exception_message": "/opt/comfy/nodes.py exploded", "traceback": ["File /opt/comfy/x.py"],
                "prompt_id": "p-1", "backend": BACKEND},
    "transient": False,
}  # fmt: skip


def test_a_step_failure_quotes_its_jobs_error_in_the_tenant_view() -> None:
    step = {"code": "STEP_FAILED", "message": f"step 'a' failed: {EXECUTION['message']}",
            "details": {"step": "a", "job_id": "j1", "error": EXECUTION}}  # fmt: skip
    out = public_error(step)
    assert out is not None and out["code"] == "STEP_FAILED"
    assert out["details"]["error"]["code"] == "EXECUTION_ERROR" and "KSampler" in out["message"]
    text = json.dumps(out)
    assert BACKEND not in text and "/opt/comfy" not in text and "traceback" not in text and "p-1" not in text


def test_own_words_and_own_input_pass_through() -> None:
    quota = {"code": "STEP_FAILED", "message": "step 'a': the daily job quota of 5 is used up",
             "details": {"step": "a", "limit": 5}}  # fmt: skip
    assert public_error(quota)["message"] == quota["message"]  # type: ignore[index]
    invalid = {"code": "VALIDATION_ERROR", "message": "width: must be a multiple of 8", "details": [{"field": "width"}]}
    assert public_error(invalid)["details"] == [{"field": "width"}]  # type: ignore[index]
    unknown = public_error({"code": "SOMETHING_NEW", "message": f"at {BACKEND}", "details": {"backend": BACKEND}})
    assert unknown == {"code": "SOMETHING_NEW", "transient": False, "message": "The job failed (SOMETHING_NEW).",
                       "details": {}}  # fmt: skip
