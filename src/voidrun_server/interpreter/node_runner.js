// A javascript context of the code interpreter: one persistent node process (node.py).
//
// Requests come as JSON lines on stdin: {code, env, marker}. Each cell runs as a script in this
// process's global context (vm.runInThisContext), so globals and top-level let/const/class
// declarations persist between cells; its value (awaited if it is a promise) is the result.
// After a cell, the marker goes to stdout and stderr (so the reader knows it has all of the
// cell's output) and the outcome as one JSON line to the control pipe: {result: {"text/plain": ...}} or
// {error: {name, value, traceback}} (fd: the last argument). SIGINT interrupts the running cell, never the process.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const util = require('util');
const vm = require('vm');
const { createRequire } = require('module');

globalThis.require = createRequire(path.join(process.cwd(), '<cell>'));

let interrupt = null; // rejects the promise the current cell waits for
process.on('SIGINT', () => {
  if (interrupt) interrupt(new Error('Execution interrupted'));
});

const CONTROL_FD = Number(process.argv[2]);

function reply(message) {
  fs.writeSync(CONTROL_FD, JSON.stringify(message) + '\n');
}

function describe(error) {
  if (error instanceof Error) {
    // The cell's frames, not the runner's.
    const stack = String(error.stack || '')
      .split('\n')
      .filter((line) => !/node_runner\.js|\(node:|at node:/.test(line))
      .join('\n');
    return { name: error.name, value: error.message, traceback: stack };
  }
  return { name: 'Error', value: util.inspect(error), traceback: '' };
}

function compile(code) {
  try {
    return new vm.Script(code, { filename: 'cell.js' });
  } catch (error) {
    // Top-level await: the cell runs as an async function (its declarations stay local),
    // returning its value if it is one expression.
    if (!(error instanceof SyntaxError && /await/.test(code))) throw error;
    try {
      return new vm.Script(`(async () => (\n${code}\n))()`, { filename: 'cell.js' });
    } catch {
      return new vm.Script(`(async () => {\n${code}\n})()`, { filename: 'cell.js' });
    }
  }
}

async function run(code) {
  const script = compile(code);
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === 'function') {
    value = await new Promise((resolve, reject) => {
      interrupt = reject;
      value.then(resolve, reject);
    });
  }
  return value;
}

async function execute(request) {
  const saved = {};
  for (const [key, value] of Object.entries(request.env || {})) {
    saved[key] = process.env[key];
    process.env[key] = value;
  }
  let outcome;
  try {
    const value = await run(request.code);
    outcome = value === undefined ? {} : { result: { 'text/plain': util.inspect(value) } };
  } catch (error) {
    outcome = { error: describe(error) };
  } finally {
    interrupt = null;
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
  process.stdout.write(`${request.marker} 0\n`);
  process.stderr.write(`${request.marker}\n`);
  reply(outcome);
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(() => execute(JSON.parse(line)));
});
lines.on('close', () => process.exit(0));
