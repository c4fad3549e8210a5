// js-request-validator: header rules, written in JavaScript.
//
// `required` headers must be present (and, when a list of values is given, carry one of them):
// 400. `forbidden` headers must be absent (e.g. internal debug switches a client must not set):
// 403. Every refusal is an RFC 9457 problem+json naming the header, and is counted.
import log from "weir:policy/log@0.1.0";
import metrics from "weir:policy/metrics@0.1.0";

let rules = null;

const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

/** `{ required: { name: [values] | [] }, forbidden: [names], methods?: [..] }` */
export function init(config) {
  const c = JSON.parse(config || "{}");
  for (const key of Object.keys(c)) {
    if (!["required", "forbidden", "methods"].includes(key)) throw `unknown config key \`${key}\``;
  }
  const required = [];
  for (const [name, values] of Object.entries(c.required ?? {})) {
    const n = name.toLowerCase();
    if (!TOKEN.test(n)) throw `required: \`${name}\` is not a header name`;
    if (!Array.isArray(values) || values.some((v) => typeof v !== "string")) {
      throw `required.${name}: expected a list of allowed values ([] = any value)`;
    }
    required.push({ name: n, values });
  }
  const forbidden = (c.forbidden ?? []).map((name, i) => {
    if (typeof name !== "string" || !TOKEN.test(name.toLowerCase())) throw `forbidden[${i}] is not a header name`;
    return name.toLowerCase();
  });
  const methods = c.methods ? c.methods.map((m) => String(m).toUpperCase()) : null;
  if (required.length === 0 && forbidden.length === 0) throw "nothing to check: set `required` and/or `forbidden`";
  rules = { required, forbidden, methods };
  return { needsRequestBody: false, needsResponseBody: false };
}

function refuse(status, title, header, detail) {
  metrics.counterAdd("header_rejections_total", [["header", header], ["status", String(status)]], 1);
  log.log("info", "request refused", [["header", header], ["status", String(status)]]);
  return {
    tag: "respond",
    val: {
      status,
      headers: [["content-type", "application/problem+json"]],
      body: JSON.stringify({ type: "about:blank", title, status, detail }),
    },
  };
}

export function onRequest(req) {
  if (rules.methods && !rules.methods.includes(req.method)) return { tag: "continue", val: {} };
  for (const name of rules.forbidden) {
    if (req.headers.some(([k]) => k === name)) {
      return refuse(403, "forbidden header", name, `the \`${name}\` header may not be sent`);
    }
  }
  for (const { name, values } of rules.required) {
    const got = req.headers.filter(([k]) => k === name).map(([, v]) => v.trim());
    if (got.length === 0) return refuse(400, "missing header", name, `the \`${name}\` header is required`);
    if (values.length > 0 && !got.every((v) => values.includes(v))) {
      return refuse(400, "invalid header", name, `\`${name}\` must be one of: ${values.join(", ")}`);
    }
  }
  return { tag: "continue", val: {} };
}
