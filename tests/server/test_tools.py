"""MCP sessions through the official SDK, calling each tool: over stdio with `rag mcp` as an
assistant would start it, and over streamable HTTP at /mcp with the API's keys and roles."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import MODEL_CACHE, REPO
from tests.server.conftest import copy_of_samples, running, server_settings

WARRANTY = "How long is the battery module covered by the warranty?"
OFF_TOPIC = "What is the capital of France?"


@pytest.fixture(scope="module")
def data(sample_kb_dir, tmp_path_factory):
    return copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("mcp"))


async def call_each_tool(client: Client, kb: str, question: str) -> dict[str, Any]:
    """What a session sees: the tools, and each one's result (structured, or the error's text)."""

    async def call(name: str, **arguments: Any) -> Any:
        result = await client.call_tool(name, arguments)
        return ("error", result.content[0].text) if result.is_error else result.structured_content

    return {
        "tools": sorted(t.name for t in (await client.list_tools()).tools),
        "list": await call("list_knowledge_bases"),
        "search": await call("search", kb=kb, query="battery module warranty years", top_k=3),
        "ask": await call("ask", kb=kb, question=question),
    }


@pytest.mark.slow
def test_rag_mcp_over_stdio_lists_searches_and_answers(data) -> None:
    env = {
        "RAG_DATA_DIR": str(data),
        "RAG_CACHE_DIR": str(MODEL_CACHE),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        **{k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TMPDIR")},
    }
    params = StdioServerParameters(command=sys.executable, args=["-m", "rag", "mcp"], env=env, cwd=str(data))

    async def session() -> dict[str, Any]:
        async with Client(params) as client:
            seen = await call_each_tool(client, "sample", OFF_TOPIC)
            seen["missing"] = (await client.call_tool("search", {"kb": "nowhere", "query": "x"})).content[0].text
            return seen

    seen = asyncio.run(session())
    assert seen["tools"] == ["ask", "list_knowledge_bases", "search"]
    assert seen["list"] == {"knowledge_bases": [{"name": "sample", "documents": 5, "passages": 10}]}
    hits = seen["search"]["hits"]
    assert hits[0]["file"] == "helios-h10-warranty.pdf" and hits[0]["page"] == 2 and len(hits) == 3
    assert seen["ask"]["found"] is False and seen["ask"]["answer"] == "I could not find the answer in the documents."
    assert seen["ask"]["citations"], "the closest passages, to check"
    assert "no knowledge base named 'nowhere'" in seen["missing"]


@pytest.fixture(scope="module")
def server(data, embedder, short_chat_model):
    with running(server_settings(data), embedder, short_chat_model) as srv:
        yield srv


def over_http(server, key: str, kb: str, question: str) -> dict[str, Any]:
    async def session() -> dict[str, Any]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
            Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
        ):
            return await call_each_tool(client, kb, question)

    return asyncio.run(session())


@pytest.mark.slow
def test_mcp_over_http_answers_with_citations_for_a_key_that_may_read(server) -> None:
    seen = over_http(server, server.key("assistant", ["sample"], "read"), "sample", WARRANTY)
    assert seen["tools"] == ["ask", "list_knowledge_bases", "search"]
    assert [b["name"] for b in seen["list"]["knowledge_bases"]] == ["sample"]
    assert seen["search"]["hits"][0]["file"] == "helios-h10-warranty.pdf"
    answer = seen["ask"]
    assert answer["found"] and ("ten" in answer["answer"].lower() or "10" in answer["answer"])
    assert ("helios-h10-warranty.pdf", 2) in {(c["file"], c["page"]) for c in answer["citations"]}


def test_mcp_over_http_shows_another_bases_key_nothing(server) -> None:
    seen = over_http(server, server.key("outsider", ["other"], "admin"), "sample", OFF_TOPIC)
    assert seen["list"] == {"knowledge_bases": []}
    for tool in ("search", "ask"):
        kind, message = seen[tool]
        assert kind == "error" and message.endswith("this API key (outsider) is not for knowledge base 'sample'")
