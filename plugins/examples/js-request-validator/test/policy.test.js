// `node --test` (from this directory or plugins/examples): the policy against the mock host.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../../js-test-support/weir-host.mjs", import.meta.url);
const { host, request } = await import("../../js-test-support/weir-host.mjs");
const policy = await import("../policy.js");

beforeEach(() => {
  host.reset();
  policy.init(
    JSON.stringify({ required: { "X-Api-Version": ["1", "2"], "x-tenant": [] }, forbidden: ["x-debug"] }),
  );
});

const ok = [["x-api-version", "2"], ["x-tenant", "acme"]];

test("a request following the rules continues unchanged", () => {
  assert.deepEqual(policy.onRequest(request("GET", "/", ok)), { tag: "continue", val: {} });
  assert.equal(host.metrics.length, 0);
});

test("missing and invalid headers are 400, forbidden ones 403", () => {
  const missing = policy.onRequest(request("GET", "/", [["x-api-version", "1"]]));
  assert.equal(missing.val.status, 400);
  assert.match(missing.val.body, /x-tenant/);
  const invalid = policy.onRequest(request("GET", "/", [["x-api-version", "3"], ["x-tenant", "a"]]));
  assert.equal(invalid.val.status, 400);
  assert.match(invalid.val.body, /must be one of: 1, 2/);
  const forbidden = policy.onRequest(request("GET", "/", [...ok, ["x-debug", "1"]]));
  assert.equal(forbidden.val.status, 403);
  assert.deepEqual(forbidden.val.headers, [["content-type", "application/problem+json"]]);
  assert.deepEqual(
    host.metrics.map(([, labels]) => labels[1][1]),
    ["400", "400", "403"],
  );
});

test("methods limits the check", () => {
  policy.init(JSON.stringify({ required: { "x-tenant": [] }, methods: ["post"] }));
  assert.equal(policy.onRequest(request("GET", "/")).tag, "continue");
  assert.equal(policy.onRequest(request("POST", "/")).val.status, 400);
});

test("bad configs are rejected", () => {
  assert.throws(() => policy.init("{}"), /nothing to check/);
  assert.throws(() => policy.init(JSON.stringify({ required: { "bad header": [] } })), /not a header name/);
  assert.throws(() => policy.init(JSON.stringify({ required: { a: "x" } })), /required\.a/);
});
