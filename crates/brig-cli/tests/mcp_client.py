"""The MCP e2e test's client (crates/brig-cli/tests/mcp_e2e.rs): the official
MCP Python SDK (`mcp` from PyPI) driving `brig mcp`, unmodified. It prints one
JSON transcript of what it saw; the Rust test asserts on it and on brig's
journal.

    python3 mcp_client.py stdio   (env: BRIG, BRIG_SOCKET, REPO)
    python3 mcp_client.py http    (env: MCP_URL, BRIG_API, ALICE, BOB, CAROL)
"""

import asyncio
import json
import os
import sys
import time

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

# Loopback only: no proxy from the environment.
for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(k, None)


def shape(r):
    """A CallToolResult as plain JSON."""
    return {
        "is_error": bool(r.is_error),
        "text": "\n".join(c.text for c in r.content if getattr(c, "type", "") == "text"),
        "structured": r.structured_content,
    }


async def call(c, log, name, args=None):
    r = shape(await c.call_tool(name, args or {}))
    log.append({"tool": name, "args": args or {}, **r})
    return r


async def stdio():
    params = StdioServerParameters(
        command=os.environ["BRIG"],
        args=["--socket", os.environ["BRIG_SOCKET"], "mcp"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    out = {"calls": []}
    log = out["calls"]
    async with Client(params) as c:
        out["protocol_version"] = c.protocol_version
        out["server_name"] = c.server_info.name if c.server_info else None
        tools = await c.list_tools()
        out["tools"] = [t.name for t in tools.tools]
        out["whoami"] = (await call(c, log, "whoami"))["structured"]
        s = await call(c, log, "session_create", {"task": "MCP-1", "repo": os.environ["REPO"]})
        out["session"] = (s["structured"] or {}).get("id")
        await call(c, log, "exec", {"argv": ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]})
        await call(c, log, "file_write", {"path": "notes/hello.txt", "content": "hello from mcp\n"})
        await call(c, log, "file_read", {"path": "notes/hello.txt"})
        await call(c, log, "file_read", {"path": "/workspace/notes/hello.txt", "encoding": "base64"})
        await call(c, log, "file_list", {"path": "notes"})
        await call(c, log, "file_list", {})
        await call(c, log, "file_read", {"path": "../etc/passwd"})
        await call(c, log, "exec", {"argv": ["ln", "-s", "/etc", "/workspace/etc-link"]})
        await call(c, log, "file_read", {"path": "etc-link/passwd"})
        await call(c, log, "file_write", {"path": "etc-link/brig-mcp-escape", "content": "x"})
        await call(c, log, "diff")
        await call(
            c,
            log,
            "plan_submit",
            {
                "goal": "Add release notes",
                "steps": ["write notes/hello.txt", "push", "open the PR"],
                "blast_radius": {"files": ["notes/hello.txt"], "services": [], "data": []},
                "rollback": "close the PR",
            },
        )
        await call(c, log, "exec", {"argv": ["alembic", "upgrade", "head"]})
        await call(c, log, "exec", {"argv": ["rm", "/workspace/etc-link"]})
        await call(c, log, "push", {"message": "notes from MCP"})
        shown = await call(c, log, "session_show")
        prefix = ((shown["structured"] or {}).get("git") or {}).get("bot_prefix", "")
        out["bot_prefix"] = prefix
        await call(c, log, "diff", {"branch": prefix + "work"})
        await call(c, log, "pr_open", {"title": "Release notes", "body": "Written through MCP."})
        await call(c, log, "push", {"branch": "main"})
        await call(c, log, "session_events", {"action": "exec.exit", "limit": 100})
        # A JSON-RPC error for an unknown tool, not a result.
        try:
            await c.call_tool("no_such_tool", {})
            out["unknown_tool"] = "answered"
        except Exception as e:  # the SDK raises the JSON-RPC error
            out["unknown_tool"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


def raw_post(url, bearer=None, body=None, session=None):
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    if bearer is not None:
        headers["authorization"] = "Bearer " + bearer
    if session is not None:
        headers["mcp-session-id"] = session
    r = httpx2.post(url, headers=headers, content=json.dumps(body or {}), timeout=30, trust_env=False)
    try:
        j = r.json()
    except Exception:
        j = None
    return {
        "status": r.status_code,
        "www_authenticate": r.headers.get("www-authenticate"),
        "session": r.headers.get("mcp-session-id"),
        "body": j,
    }


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


async def http():
    url, api = os.environ["MCP_URL"], os.environ["BRIG_API"]
    alice, bob, carol = os.environ["ALICE"], os.environ["BOB"], os.environ["CAROL"]
    out = {"raw": {}, "calls": []}
    raw = out["raw"]
    raw["no_token"] = raw_post(url, None, INIT)
    raw["bad_token"] = raw_post(url, "brig_pat_not-a-real-token-0000000000", INIT)
    r = httpx2.post(url, headers={"authorization": "Basic YWxpY2U6eA==", "content-type": "application/json"}, content=json.dumps(INIT), timeout=30, trust_env=False)
    raw["basic_auth"] = {"status": r.status_code, "www_authenticate": r.headers.get("www-authenticate")}
    init = raw_post(url, alice, INIT)
    raw["alice_init"] = init
    sid = init["session"]
    raw["no_session"] = raw_post(url, alice, LIST)
    raw["bob_on_alices_session"] = raw_post(url, bob, LIST, sid)
    raw["alice_on_her_session"] = raw_post(url, alice, LIST, sid)

    log = out["calls"]
    http_client = httpx2.AsyncClient(headers={"authorization": "Bearer " + alice}, timeout=httpx2.Timeout(30, read=300), trust_env=False)
    async with Client(streamable_http_client(url, http_client=http_client)) as c:
        out["protocol_version"] = c.protocol_version
        out["whoami"] = (await call(c, log, "whoami"))["structured"]
        s = await call(c, log, "session_create", {"task": "OPS-9", "profile": "ops"})
        out["session"] = (s["structured"] or {}).get("id")
        await call(c, log, "exec", {"command": "echo hello over http"})
        await call(c, log, "plan_submit", {"goal": "Migrate the schema", "steps": ["alembic upgrade head"], "blast_radius": {"data": ["db"]}, "rollback": "alembic downgrade -1"})
        pending = await call(c, log, "approval_request", {"command": "alembic upgrade head || echo migrated"})
        apr = ((pending["structured"] or {}).get("pending_approval") or {}).get("id")
        out["approval"] = apr
        if apr:
            await call(c, log, "approval_list")
            # carol, who holds db-approver, approves it with brig itself.
            r = httpx2.post(
                "%s/v1/approvals/%s/approve" % (api, apr),
                headers={"authorization": "Bearer " + carol, "content-type": "application/json"},
                content=json.dumps({"for": "10m"}),
                timeout=30,
                trust_env=False,
            )
            out["approve_status"] = r.status_code
            deadline = time.time() + 60
            while time.time() < deadline:
                st = await call(c, log, "approval_status", {"id": apr})
                if ((st["structured"] or {}).get("command") or {}).get("state") != "waiting":
                    break
                await asyncio.sleep(0.5)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run({"stdio": stdio, "http": http}[sys.argv[1]]())
