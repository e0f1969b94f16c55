#!/usr/bin/env node
// Cosmos DB emulator for SOPHIA's tests: @vercel/cosmosdb-server behind a small HTTP front
// that makes it acceptable to the Rust SDK (azure_data_cosmos 1.x).
//
//   node rig/cosmos.js [--port N] [--host 127.0.0.1]
//
// Prints one line `READY http://HOST:PORT/` on stdout when it accepts connections. What the
// front changes, and why:
//   1. The account document (GET /) advertises `https://<host>:<inner port>/` as its read and
//      write locations; the SDK then routes every request there. The front rewrites them to
//      its own `http://HOST:PORT/`.
//   2. Partition key range ids come back as numbers; the service (and the SDK) use strings.
//   3. Reading a missing document makes the server throw (HTTP 500); the service answers 404.
//   4. The server stores documents of any size; the service refuses an item over 2 MB with
//      413 RequestEntityTooLarge. The front does the same for document writes.
// Test hook: `POST /_rig/faults {"status":429,"count":3,"retryAfterMs":5}` makes the next
// `count` document requests (paths under /docs) answer `status` the way the service does
// (429 with `x-ms-retry-after-ms` and substatus 3200, 503 with substatus 21008).
// Requests and all other answers pass through unchanged (the server ignores auth headers and
// does not enforce partition scoping on queries: SOPHIA's own code must, and its tests check).
"use strict";

const http = require("http");
const { createHttpServer } = require("@vercel/cosmosdb-server");

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
};
const host = opt("--host", "127.0.0.1");
const port = parseInt(opt("--port", "0"), 10);

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const DOC_PATH = /^\/dbs\/[^/]+\/colls\/[^/]+\/docs\/[^/]+$/;
const PKRANGES_PATH = /^\/dbs\/[^/]+\/colls\/[^/]+\/pkranges\/?$/;

let faults = { status: 0, count: 0, retryAfterMs: 5 };

function injectFault(req, res) {
  const path = (req.url || "/").split("?")[0];
  if (faults.count <= 0 || !/\/docs(\/|$)/.test(path)) return false;
  faults.count -= 1;
  const status = faults.status;
  const headers = { "content-type": "application/json", "x-ms-activity-id": "rig-fault" };
  if (status === 429) {
    headers["x-ms-retry-after-ms"] = String(faults.retryAfterMs);
    headers["x-ms-substatus"] = "3200";
  } else if (status === 503) {
    headers["x-ms-substatus"] = "21008";
  }
  const code = status === 429 ? "TooManyRequests" : "ServiceUnavailable";
  res.writeHead(status, headers);
  res.end(JSON.stringify({ code, message: `injected by the test rig (${status})` }));
  return true;
}

// The emulator logs every handler exception; the one it throws for a missing document is
// expected (see 3. above).
if (!process.env.SOPHIA_RIG_VERBOSE) console.error = () => {};

const inner = createHttpServer({ keepAlive: true });
inner.listen(0, "127.0.0.1", () => {
  const innerPort = inner.address().port;
  const front = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", c => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (req.url === "/_rig/faults" && req.method === "POST") {
        const f = JSON.parse(body.toString("utf8") || "{}");
        faults = { status: f.status || 429, count: f.count || 0, retryAfterMs: f.retryAfterMs || 5 };
        res.writeHead(204);
        res.end();
        return;
      }
      if (injectFault(req, res)) return;
      const path = (req.url || "/").split("?")[0];
      if ((req.method === "POST" || req.method === "PUT") && /\/docs(\/|$)/.test(path)
          && body.length > 2 * 1024 * 1024) {
        res.writeHead(413, { "content-type": "application/json", "x-ms-activity-id": "rig-size" });
        res.end(JSON.stringify({ code: "RequestEntityTooLarge",
          message: "Message: {\"Errors\":[\"Request size is too large\"]}" }));
        return;
      }
      const headers = { ...req.headers, host: `127.0.0.1:${innerPort}` };
      const upstream = http.request(
        { host: "127.0.0.1", port: innerPort, method: req.method, path: req.url, headers, agent },
        ures => {
          const out = [];
          ures.on("data", c => out.push(c));
          ures.on("end", () => respond(req, res, ures, Buffer.concat(out)));
        }
      );
      upstream.on("error", err => {
        res.writeHead(503, { "content-type": "application/json" });
        res.end(JSON.stringify({ code: "ServiceUnavailable", message: String(err) }));
      });
      upstream.end(body);
    });
  });

  function respond(req, res, ures, body) {
    let status = ures.statusCode;
    const headers = { ...ures.headers };
    delete headers["content-length"];
    delete headers["transfer-encoding"];
    headers.connection = "keep-alive";
    const path = (req.url || "/").split("?")[0];
    const self = `http://${host}:${front.address().port}/`;
    try {
      if (req.method === "GET" && path === "/" && status === 200) {
        const account = JSON.parse(body.toString("utf8"));
        for (const list of ["writableLocations", "readableLocations"]) {
          for (const loc of account[list] || []) loc.databaseAccountEndpoint = self;
        }
        body = Buffer.from(JSON.stringify(account));
      } else if (req.method === "GET" && PKRANGES_PATH.test(path) && status === 200) {
        const feed = JSON.parse(body.toString("utf8"));
        for (const range of feed.PartitionKeyRanges || []) {
          range.id = String(range.id);
          range.parents = (range.parents || []).map(String);
        }
        body = Buffer.from(JSON.stringify(feed));
      } else if (req.method === "GET" && DOC_PATH.test(path) && status === 500) {
        status = 404;
        body = Buffer.from(JSON.stringify({
          code: "NotFound",
          message: "Entity with the specified id does not exist in the system."
        }));
      }
    } catch (err) {
      // Not JSON: pass it through as it came.
    }
    headers["content-length"] = String(body.length);
    if (headers["content-location"]) {
      headers["content-location"] = headers["content-location"].replace(/^https:\/\/[^/]+\//, self);
    }
    res.writeHead(status, headers);
    res.end(body);
  }

  front.listen(port, host, () => {
    process.stdout.write(`READY http://${host}:${front.address().port}/\n`);
  });
});

// Leave with the parent: the tests own this process through its stdin.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
