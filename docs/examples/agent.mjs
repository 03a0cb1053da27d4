// Calling behalf from an agent: one user's turn, with that user's tools and identity.
// Node 20+, no dependencies. Run it without NODE_USE_ENV_PROXY (or with behalf's host in
// NO_PROXY): calls to behalf's API, and the user's token, must not go through a proxy.

/**
 * @typedef {{ id: string, name: string, arguments: object }} ToolCall
 * @typedef {{ text: string } | { tool_calls: ToolCall[] }} Reply
 * @typedef {{ complete(messages: object[], tools: object[]): Promise<Reply> }} Model
 */

/** One call to behalf's API as this user: [status, JSON body] (errors are JSON too). */
async function behalf(method, url, token, body) {
  const response = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  return [response.status, await response.json()];
}

/**
 * Answers one message. `token` is this user's identity token, used for this turn only.
 * @param {string} baseUrl
 * @param {string} token
 * @param {string} userMessage
 * @param {Model} model
 * @returns {Promise<string>}
 */
export async function runAgent(baseUrl, token, userMessage, model,
                               { anthropic = false, maxSteps = 10 } = {}) {
  const query = anthropic ? "?format=anthropic" : "";
  const [status, listed] = await behalf("GET", `${baseUrl}/v1/tools${query}`, token);
  if (status !== 200) throw new Error(`GET /v1/tools: ${status} ${JSON.stringify(listed)}`);
  const tools = listed.tools;
  const names = new Set(tools.map((tool) => (tool.function ?? tool).name));
  const messages = [{ role: "user", content: userMessage }];
  for (let step = 0; step < maxSteps; step++) {
    const reply = await model.complete(messages, tools);
    if (!reply.tool_calls?.length) return reply.text;
    messages.push({ role: "assistant", tool_calls: reply.tool_calls });
    for (const call of reply.tool_calls) {
      let result;
      if (names.has(call.name)) { // never send behalf a name it did not list
        const url = `${baseUrl}/v1/tools/${call.name}/invoke`;
        let code;
        [code, result] = await behalf("POST", url, token, call.arguments ?? {});
        if (code === 401) throw new Error(`behalf refused the user's token: ${JSON.stringify(result)}`);
      } else {
        result = { error: { code: "unknown_tool", message: `there is no tool named ${JSON.stringify(call.name)}` } };
      }
      messages.push({ role: "tool", tool_call_id: call.id, content: JSON.stringify(result) });
    }
  }
  throw new Error(`no answer after ${maxSteps} model calls`);
}
