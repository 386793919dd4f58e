// Preload (`node --require ./loopback-preload.cjs …`) that makes every TCP
// server of the process listen on 127.0.0.1 only, whatever host or port form
// the program passes, and prints `listening on 127.0.0.1:PORT` on stdout once
// it listens. server-everything binds all interfaces otherwise; tests must
// stay on loopback.
"use strict";
const net = require("net");

const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function patchedListen(...args) {
  const callback = typeof args[args.length - 1] === "function" ? args.pop() : undefined;
  const first = args[0];
  let port = 0;
  if (first !== null && typeof first === "object") {
    if (first.path !== undefined || first.fd !== undefined || first._handle !== undefined) {
      // Unix sockets and inherited handles are not network listeners.
      return originalListen.apply(this, callback ? [...args, callback] : args);
    }
    port = Number(first.port ?? 0);
  } else if (first !== undefined) {
    port = Number(first);
  }
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`loopback-preload: unusable port ${String(first)}`);
  }
  this.once("listening", () => {
    const addr = this.address();
    process.stdout.write(`listening on ${addr.address}:${addr.port}\n`);
  });
  return originalListen.call(this, { port, host: "127.0.0.1" }, callback);
};
