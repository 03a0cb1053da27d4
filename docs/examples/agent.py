"""Calling behalf from an agent: one user's turn, with that user's tools and identity."""
import json
import urllib.error
import urllib.request
from typing import Any, Protocol

# behalf's API is local: never send its calls (and the user's token) through an HTTP(S)_PROXY.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Model(Protocol):
    def complete(self, messages: list[dict], tools: list[dict]) -> dict:
        """{"text": str} to answer, or {"tool_calls": [{"id", "name", "arguments": dict}]}."""


def _behalf(method: str, url: str, token: str, body: Any = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _opener.open(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:  # behalf's errors are JSON bodies too
        return error.code, json.load(error)


def run_agent(base_url: str, token: str, user_message: str, model: Model, *,
              anthropic: bool = False, max_steps: int = 10) -> str:
    """Answers one message. `token` is this user's identity token, used for this turn only."""
    query = "?format=anthropic" if anthropic else ""
    status, listed = _behalf("GET", f"{base_url}/v1/tools{query}", token)
    if status != 200:
        raise RuntimeError(f"GET /v1/tools: {status} {listed}")
    tools = listed["tools"]
    names = {tool.get("function", tool)["name"] for tool in tools}
    messages: list[dict] = [{"role": "user", "content": user_message}]
    for _ in range(max_steps):
        reply = model.complete(messages, tools)
        if not reply.get("tool_calls"):
            return reply["text"]
        messages.append({"role": "assistant", "tool_calls": reply["tool_calls"]})
        for call in reply["tool_calls"]:
            if call["name"] in names:  # never send behalf a name it did not list
                url = f"{base_url}/v1/tools/{call['name']}/invoke"
                status, result = _behalf("POST", url, token, call.get("arguments") or {})
                if status == 401:
                    raise PermissionError(f"behalf refused the user's token: {result}")
            else:
                result = {"error": {"code": "unknown_tool",
                                    "message": f"there is no tool named {call['name']!r}"}}
            messages.append({"role": "tool", "tool_call_id": call["id"],
                             "content": json.dumps(result)})
    raise RuntimeError(f"no answer after {max_steps} model calls")
