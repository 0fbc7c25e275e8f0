"""A JSON object with a repeated key is refused with a 422 naming the key, never read with the last value winning."""

from __future__ import annotations

from tests.api.helpers import error_of, fields_of

CASES = {
    "/api/v1/jobs": ('{"prompt": "a cat", "width": 64, "height": 64, "prompt": "something else"}', "prompt"),
    "/api/v1/generate": ('{"prompt": "a cat", "steps": 2, "steps": 150}', "steps"),
    "/api/v1/batches": ('{"items": [{"prompt": "a", "seed": 1, "seed": 2}]}', "seed"),
}


async def test_repeated_keys_are_refused_with_the_key_named(api_factory, http) -> None:  # type: ignore[no-untyped-def]
    base = await api_factory(run_worker=False)
    headers = {"Content-Type": "application/json"}
    for path, (body, key) in CASES.items():
        async with http.post(f"{base}{path}", data=body, headers=headers) as r:
            err = await error_of(r, 422, "VALIDATION_ERROR")
        assert fields_of(err) == {key} and repr(key) in err["message"], (path, err)
    graph = '{"workflow": {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "images": ["3", 0]}}}}'
    async with http.post(f"{base}/api/v1/jobs", data=graph, headers=headers) as r:
        err = await error_of(r, 422, "VALIDATION_ERROR")
    assert fields_of(err) == {"images"}
    async with http.get(f"{base}/api/v1/jobs") as r:
        assert (await r.json())["items"] == [], "nothing was queued"
    # the same keys once each are fine
    async with http.post(f"{base}/api/v1/jobs", data='{"prompt": "a cat", "width": 64, "height": 64}',
                         headers=headers) as r:  # fmt: skip
        assert r.status == 202
