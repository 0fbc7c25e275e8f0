"""The credentials block: registered by ``prefect block register -m comfyflow.prefect``, saved and loaded on a
real Prefect server, its key stored as a secret."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from comfyflow.prefect import ComfyflowCredentials

pytestmark = pytest.mark.prefect
SLUG = "comfyflow-credentials"


async def test_prefect_block_register_registers_the_block_type(prefect_api_url) -> None:  # type: ignore[no-untyped-def]
    async with get_client() as client:
        try:  # start from a server that does not know the type (another test may have saved a block)
            block_type = await client.read_block_type_by_slug(SLUG)
            for doc in await client.read_block_documents():
                if doc.block_type_id == block_type.id:
                    await client.delete_block_document(doc.id)
            await client.delete_block_type(block_type.id)
        except ObjectNotFound:
            pass
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prefect", "block", "register", "-m", "comfyflow.prefect",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(proc.communicate(), 90))[0].decode()
    assert proc.returncode == 0, output[-2000:]
    assert "Comfyflow Credentials" in output
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug(SLUG)
        schema = await client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert block_type.name == "Comfyflow Credentials"
    assert schema is not None and schema.fields["secret_fields"] == ["api_key"]
    assert set(schema.fields["properties"]) == {"url", "api_key", "timeout"}


async def test_block_saved_and_loaded_with_its_key_secret(prefect_api_url) -> None:  # type: ignore[no-untyped-def]
    name = f"cf-{uuid.uuid4().hex[:10]}"
    await ComfyflowCredentials(url="http://comfyflow.internal:8000/", api_key="cf_live_abc_secret", timeout=12).save(
        name
    )
    try:
        loaded = await ComfyflowCredentials.load(name)
        assert loaded.url == "http://comfyflow.internal:8000"
        assert loaded.api_key is not None and loaded.api_key.get_secret_value() == "cf_live_abc_secret"
        assert loaded.timeout == 12
        client = loaded.get_client()
        assert client.url == "http://comfyflow.internal:8000"
        assert client.headers["Authorization"] == "Bearer cf_live_abc_secret"
        await client.aclose()
        assert "cf_live_abc_secret" not in repr(loaded)
        async with get_client() as prefect:
            doc = await prefect.read_block_document_by_name(name, block_type_slug=SLUG, include_secrets=False)
        assert doc.data["api_key"] != "cf_live_abc_secret"  # the API hands it out only when asked for secrets
    finally:
        async with get_client() as prefect:
            doc = await prefect.read_block_document_by_name(name, block_type_slug=SLUG)
            await prefect.delete_block_document(doc.id)


def test_block_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ComfyflowCredentials(url="comfyflow.internal:8000")
