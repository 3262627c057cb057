// client/refusals.js: which subscription a broker refused by closing the connection (RabbitMQ 3.x does).

import { test } from "node:test";
import assert from "node:assert/strict";
import { SubscriptionRefusals } from "../../client/refusals.js";

test("the oldest subscription in flight at a close takes the strike; two closes in a row refuse it", () => {
  // Each row: one connection's steps, then what its close returns and which kinds count as refused after it.
  const table = [
    // The list's entries, then a guarded inbox: the broker closes at the entries (RabbitMQ, no read right).
    { steps: ["connected", "sent replies", "answered replies", "sent entries", "sent inbox a"], closes: null, refused: [] },
    { steps: ["connected", "sent replies", "answered replies", "sent entries"], closes: "entries", refused: ["entries"] },
    // Without the entries now: the inbox of a camera this login may not watch, twice.
    { steps: ["connected", "sent replies", "answered replies", "sent inbox b"], closes: null, refused: ["entries"] },
    { steps: ["connected", "sent replies", "answered replies", "sent inbox b"], closes: "inbox b", refused: ["entries", "inbox b"] },
    // A close with nothing in flight (a network's, a server restart's) strikes nothing.
    { steps: ["connected", "sent replies", "answered replies"], closes: null, refused: ["entries", "inbox b"] },
    // An answer clears a kind's strikes: rights granted since, or a close that was the network's.
    { steps: ["connected", "sent inbox b", "answered inbox b", "sent inbox c"], closes: null, refused: ["entries"] },
    { steps: ["connected", "sent media"], closes: null, refused: ["entries"] },
    // Strikes are per kind: another subscription answered between two closes does not reset inbox c's.
    { steps: ["connected", "sent media", "answered media", "sent inbox c"], closes: "inbox c", refused: ["entries", "inbox c"] },
  ];
  const r = new SubscriptionRefusals(2);
  const tokens = new Map();
  table.forEach((row, i) => {
    for (const step of row.steps) {
      const [verb, ...rest] = step.split(" ");
      const kind = rest.join(" ");
      if (verb === "connected") r.connected();
      else if (verb === "sent") tokens.set(kind, r.sent(kind));
      else if (verb === "answered") r.answered(tokens.get(kind));
    }
    const closed = r.closed();
    assert.equal(closed?.refused ? closed.kind : null, row.closes, `row ${i}: ${row.steps.join(", ")}`);
    for (const kind of ["entries", "inbox a", "inbox b", "inbox c", "media"]) {
      assert.equal(r.refused(kind), row.refused.includes(kind), `row ${i}: ${kind}`);
    }
  });
});

test("a fresh connection forgets what the closed one had in flight", () => {
  const r = new SubscriptionRefusals(1);
  r.sent("entries");
  r.connected();
  assert.equal(r.closed(), null);
  assert.equal(r.refused("entries"), false);
  // What the fresh one has in flight is what a close strikes.
  r.sent("entries");
  assert.deepEqual(r.closed(), { kind: "entries", strikes: 1, refused: true });
  assert.equal(r.refused("entries"), true);
});
