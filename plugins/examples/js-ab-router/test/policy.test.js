// `node --test` (from this directory or plugins/examples): the policy against the mock host.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

register("../../js-test-support/weir-host.mjs", import.meta.url);
const { host, request } = await import("../../js-test-support/weir-host.mjs");
const policy = await import("../policy.js");

const config = {
  experiment: "checkout",
  variants: [
    { name: "a", weight: 50 },
    { name: "b", weight: 50, path_prefix: "/v2" },
  ],
  override_header: "x-force-variant",
};

beforeEach(() => {
  host.reset();
  policy.init(JSON.stringify(config));
});

test("a user keeps the same variant; variant b is routed under /v2", () => {
  const seen = new Set();
  for (let i = 0; i < 5; i++) {
    host.reset();
    const a = policy.onRequest(request("GET", "/cart", [["cookie", "theme=dark; ab_user=u-42"]]));
    seen.add(JSON.stringify(a));
  }
  assert.equal(seen.size, 1);
  const [edits] = [...seen].map((s) => JSON.parse(s).val);
  const variant = edits.setHeaders[0][1];
  assert.equal(edits.path, variant === "b" ? "/v2/cart" : undefined);
});

test("users spread over both variants by weight", () => {
  const counts = { a: 0, b: 0 };
  for (let i = 0; i < 2000; i++) {
    const a = policy.onRequest(request("GET", "/", [["x-user-id", `user-${i}`]]));
    counts[a.val.setHeaders[0][1]]++;
  }
  assert.ok(counts.a > 850 && counts.b > 850, JSON.stringify(counts));
});

test("the override header forces a variant and the response names it", () => {
  const a = policy.onRequest(request("GET", "/x", [["x-force-variant", "b"]]));
  assert.deepEqual(a.val, { setHeaders: [["x-variant", "b"]], path: "/v2/x" });
  assert.equal(host.context.get("ab.variant"), "b");
  assert.deepEqual(policy.onResponse({ status: 200, headers: [], body: null }).setHeaders, [["x-variant", "b"]]);
});

test("bad configs are rejected with the key's name", () => {
  assert.throws(() => policy.init(JSON.stringify({ ...config, variants: [{ name: "a" }] })), /at least two/);
  assert.throws(
    () => policy.init(JSON.stringify({ ...config, variants: [{ name: "a" }, { name: "b", path_prefix: "v2/" }] })),
    /variants\[1\]\.path_prefix/,
  );
  assert.throws(() => policy.init(JSON.stringify({ ...config, typo: 1 })), /unknown config key `typo`/);
});
