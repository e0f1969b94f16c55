#!/usr/bin/env node
// Azurite (npm `azurite` 3.35: Blob and Queue storage) for SOPHIA's tests, on free loopback
// ports, in memory, started with --skipApiVersionCheck --loose --disableTelemetry.
//
//   node rig/azurite.js
//
// Prints one line `READY http://127.0.0.1:BLOB_PORT http://127.0.0.1:QUEUE_PORT` once both
// services listen, and stops Azurite when its stdin closes (the test process ended).
"use strict";

const { spawn } = require("child_process");
const path = require("path");
const readline = require("readline");

const main = path.join(__dirname, "node_modules", "azurite", "dist", "src", "azurite.js");
const child = spawn(
  process.execPath,
  [
    main,
    "--blobHost", "127.0.0.1", "--blobPort", "0",
    "--queueHost", "127.0.0.1", "--queuePort", "0",
    "--tableHost", "127.0.0.1", "--tablePort", "0",
    "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--inMemoryPersistence",
  ],
  { stdio: ["ignore", "pipe", process.env.SOPHIA_RIG_VERBOSE ? "inherit" : "ignore"] },
);

const urls = {};
readline.createInterface({ input: child.stdout }).on("line", (line) => {
  if (process.env.SOPHIA_RIG_VERBOSE) process.stderr.write(line + "\n");
  const m = line.match(/Azurite (Blob|Queue) service is successfully listening at (\S+)/);
  if (!m) return;
  urls[m[1]] = m[2].replace(/\/$/, "");
  if (urls.Blob && urls.Queue && !urls.printed) {
    urls.printed = true;
    process.stdout.write(`READY ${urls.Blob} ${urls.Queue}\n`);
  }
});
child.on("exit", (code) => process.exit(code === null ? 1 : code));

const stop = () => {
  child.kill("SIGTERM");
  setTimeout(() => process.exit(0), 2000).unref();
};
process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
