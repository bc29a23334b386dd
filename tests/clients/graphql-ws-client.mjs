#!/usr/bin/env node
// The graphql-ws reference client (graphql-transport-ws subprotocol) as a small CLI, so the Rust
// integration tests can check Herald against the client most JavaScript apps use.
//
//   node graphql-ws-client.mjs --url ws://127.0.0.1:PORT/graphql --token KEY_OR_JWT \
//     --query 'subscription { onOrderUpdated { eventId status } }' [--variables JSON] \
//     [--count N] [--timeout-ms T] [--ready-file PATH] [--trace]
//
// stdout: one JSON line per `next` message, the execution result as received
// (`{"data":{...}}`). Exit 0 after N events (`--count`, default: until the server completes) or on
// `complete`. Any failure prints one `{"error":...}` line and exits 1: a GraphQL `error` message
// (`{"error":[...errors]}`), a `next` carrying `errors`, a close (`{"error":{"closeCode":4401,
// "reason":"..."}}`), or the timeout (default 10000 ms).
//
// `--ready-file PATH`: graphql-transport-ws has no subscribe acknowledgement, so the file is
// written once the server has acked the connection (`connection_ack`, seen through the
// `on.connected` callback) and the `subscribe` message has been handed to the socket. A test
// waits for the file before it publishes.
//
// `--trace` copies every frame, both ways, to stderr (`>>> ` sent, `<<< ` received).
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

let finished = false;
function finish(code, errorValue) {
  if (finished) return;
  finished = true;
  if (errorValue !== undefined) emit({ error: errorValue });
  // Exit only once stdout is flushed (it may be a pipe the test reads).
  process.stdout.write('', () => process.exit(code));
}

let options;
try {
  ({ values: options } = parseArgs({
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      query: { type: 'string' },
      variables: { type: 'string' },
      count: { type: 'string' },
      'timeout-ms': { type: 'string', default: '10000' },
      'ready-file': { type: 'string' },
      trace: { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (err) {
  finish(1, `usage: ${err.message}`);
}

if (options && !finished) main(options);

function main(options) {
  if (!options.url || !options.query) {
    finish(1, 'usage: --url and --query are required');
    return;
  }
  let variables;
  try {
    variables = options.variables ? JSON.parse(options.variables) : undefined;
  } catch (err) {
    finish(1, `--variables is not JSON: ${err.message}`);
    return;
  }
  const wanted = options.count === undefined ? Infinity : Number(options.count);
  const timeoutMs = Number(options['timeout-ms']);
  if (!Number.isFinite(timeoutMs) || !(wanted >= 0)) {
    finish(1, 'usage: --count and --timeout-ms must be numbers');
    return;
  }

  let received = 0;
  let acked = false;
  let readyWritten = false;
  const writeReady = () => {
    if (readyWritten || !options['ready-file']) return;
    readyWritten = true;
    writeFileSync(options['ready-file'], 'ready\n');
  };

  const trace = (line) => {
    if (options.trace) process.stderr.write(line + '\n');
  };
  // graphql-ws sends `subscribe` right after `connection_ack`, without a callback of its own;
  // this socket class notices that frame and writes the ready file once `ws` has flushed it.
  let currentSocket = null;
  class NoticingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      currentSocket = this;
      this.on('message', (data) => trace('<<< ' + String(data)));
      this.on('close', (code, reason) => trace(`closed ${code} ${String(reason)}`));
    }

    send(data, ...rest) {
      trace('>>> ' + String(data));
      let type;
      try {
        type = JSON.parse(String(data)).type;
      } catch {
        type = undefined;
      }
      if (type !== 'subscribe' || rest.length > 0) return super.send(data, ...rest);
      return super.send(data, (err) => {
        if (!err && acked) writeReady();
      });
    }
  }

  const client = createClient({
    url: options.url,
    webSocketImpl: NoticingWebSocket,
    connectionParams: options.token ? { authorization: 'Bearer ' + options.token } : {},
    // A test client: report the first failure instead of retrying it away.
    retryAttempts: 0,
    shouldRetry: () => false,
    on: {
      connected: () => {
        acked = true;
      },
    },
  });

  const timer = setTimeout(() => {
    finish(1, { timeout: `no completion after ${timeoutMs} ms`, received });
  }, timeoutMs);

  // Ends like an app would: `complete` for the subscription, then a 1000 close; the exit waits
  // for that briefly so the server sees a clean end, not a dropped socket.
  let closing = false;
  const done = (code, errorValue) => {
    if (closing) return;
    closing = true;
    clearTimeout(timer);
    unsubscribe();
    const socket = currentSocket;
    const closed = new Promise((resolve) => {
      if (!socket || socket.readyState === WebSocket.CLOSED) resolve();
      else socket.once('close', resolve);
    });
    const grace = new Promise((resolve) => setTimeout(resolve, 500));
    client.dispose();
    Promise.race([closed, grace]).finally(() => finish(code, errorValue));
  };

  if (wanted === 0) {
    // Nothing to wait for but the readiness: connect, subscribe, leave.
    const poll = setInterval(() => {
      if (readyWritten || (acked && !options['ready-file'])) {
        clearInterval(poll);
        done(0);
      }
    }, 10);
  }

  const unsubscribe = client.subscribe(
    { query: options.query, variables },
    {
      next(result) {
        if (result.errors && result.errors.length > 0) {
          done(1, result.errors);
          return;
        }
        emit(result);
        received += 1;
        if (received >= wanted) done(0);
      },
      error(err) {
        done(1, describeError(err));
      },
      complete() {
        if (received >= wanted || wanted === Infinity) done(0);
        else done(1, { completed: `server completed after ${received} of ${wanted} events` });
      },
    },
  );
}

// graphql-ws reports an `error` message as an array of GraphQL errors, a close as the
// CloseEvent, and anything else as an Error.
function describeError(err) {
  if (Array.isArray(err)) return err;
  if (err && typeof err === 'object' && 'code' in err && 'reason' in err) {
    return { closeCode: err.code, reason: String(err.reason) };
  }
  if (err instanceof Error) return { message: err.message };
  // A socket that never opened: `ws` hands over an ErrorEvent with the reason in `message`.
  if (err && typeof err === 'object' && 'message' in err) return { message: String(err.message) };
  return String(err);
}
