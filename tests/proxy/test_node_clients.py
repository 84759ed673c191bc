"""Node apps through a real proxy: the Node ``openai`` SDK (``responses.create``, plain and
streamed, and ``chat.completions.create``) and the Vercel AI SDK's default OpenAI provider
(which speaks the Responses API), every exchange captured in its dialect.

Needs ``node`` and ``npm`` on PATH; the packages, at the versions pinned here, are
installed once from the npm registry into a cache folder (``STILLROOM_NODE_CACHE``, else
``~/.cache/stillroom/node-clients``) and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import RunningProxy
from servers import stored_exchanges

PACKAGES = {"openai": "7.59.0", "ai": "7.0.173", "@ai-sdk/openai": "4.0.118"}
TICKET = "My card was charged twice"

SCRIPT = """
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const baseURL = process.env.STILLROOM_URL + "/v1";
const client = new OpenAI({ baseURL, apiKey: "sk-node", maxRetries: 0 });
const ticket = process.env.TICKET;
const task = { headers: { "X-Stillroom-Task": "node-tickets" } };

const ask = { model: "gpt-4o-mini", instructions: "Classify the ticket.", input: ticket };
const plain = await client.responses.create(ask, task);
const events = [];
const stream = await client.responses.create({ ...ask, stream: true }, task);
for await (const event of stream) events.push(event);
const final = events.at(-1).response;
const finalText = final.output.flatMap((item) => item.content ?? []).map((p) => p.text).join("");
const chat = await client.chat.completions.create(
  { model: "gpt-4o-mini", messages: [{ role: "user", content: ticket }] }, task);

const provider = createOpenAI({ baseURL, apiKey: "sk-node" });
const vercel = await generateText({ model: provider("gpt-4o-mini"), prompt: ticket });
const vercelStream = streamText({ model: provider("gpt-4o-mini"), prompt: ticket });
let streamed = "";
for await (const piece of vercelStream.textStream) streamed += piece;

console.log(JSON.stringify({
  plain: { id: plain.id, text: plain.output_text },
  stream: { kinds: events.map((e) => e.type), text: finalText },
  chat: chat.choices[0].message.content,
  vercel: vercel.text,
  vercelStream: streamed,
}));
"""


def _cache_root() -> Path:
    given = os.environ.get("STILLROOM_NODE_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "stillroom" / "node-clients"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    """A folder with the pinned packages installed and the client script written."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on PATH: the Node clients cannot run here")
    manifest = {
        "name": "stillroom-node-clients",
        "private": True,
        "type": "module",
        "dependencies": PACKAGES,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    folder = _cache_root() / hashlib.sha256(text.encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "node_modules" / ".package-lock.json").exists():
        (folder / "package.json").write_text(text)
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm install failed in {folder}:\n{done.stderr[-2000:]}"
    (folder / "clients.mjs").write_text(SCRIPT)
    return folder


def run_clients(folder: Path, proxy: RunningProxy) -> dict[str, Any]:
    environment = {**os.environ, "STILLROOM_URL": proxy.url, "TICKET": TICKET}
    done = subprocess.run(
        ["node", "clients.mjs"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the Node clients failed:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_node_sdk_and_vercel_ai_sdk_are_answered_and_every_exchange_is_captured(
    node_clients: Path, proxy: RunningProxy
) -> None:
    answer = f"Answer to: {TICKET}"
    seen = run_clients(node_clients, proxy)
    assert seen["plain"]["text"] == answer
    assert seen["stream"]["kinds"][0] == "response.created"
    assert seen["stream"]["kinds"][-1] == "response.completed"
    assert seen["stream"]["text"] == answer
    assert seen["chat"] == answer
    assert seen["vercel"] == answer
    assert seen["vercelStream"] == answer

    exchanges = stored_exchanges(proxy.engine, 5)
    by_dialect = sorted((e.dialect, e.stream, e.status) for e in exchanges)
    assert by_dialect == [
        ("chat", False, "ok"),
        ("responses", False, "ok"),
        ("responses", False, "ok"),
        ("responses", True, "ok"),
        ("responses", True, "ok"),
    ]
    named = [e for e in exchanges if e.task == "node-tickets"]
    assert len(named) == 3
    plain = next(e for e in named if e.dialect == "responses" and not e.stream)
    assert plain.response_id == seen["plain"]["id"]
    assert plain.request["messages"][-1] == {"role": "user", "content": TICKET}
    for exchange in exchanges:
        assert exchange.response is not None
        assert exchange.response["choices"][0]["message"]["content"] == answer
