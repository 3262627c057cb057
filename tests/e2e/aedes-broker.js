// A broker of another implementation for the broker matrix (tests/it/brokers.rs): aedes (Node.js, from npm
// with this folder's lock file), in-memory, on 127.0.0.1:PORT. Prints "READY <port>" once it listens.
//   node tests/e2e/aedes-broker.js PORT

import net from "node:net";
import { Aedes } from "aedes";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error("usage: node aedes-broker.js PORT");
  process.exit(2);
}
const broker = await Aedes.createBroker();
const server = net.createServer(broker.handle);
server.on("error", (e) => {
  console.error(`aedes: ${e.message}`);
  process.exit(1);
});
server.listen(port, "127.0.0.1", () => console.log(`READY ${port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => broker.close(() => process.exit(0))));
