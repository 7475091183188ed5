// A Node `eventsource` client (the npm package browsers' EventSource is modelled on) for
// tests/history.rs: opens URL, prints one line per event it receives, `EVENT {"id","type","data"}`,
// and `OPEN` each time a connection opens. It reconnects by itself, with Last-Event-ID, as a
// browser does, after the `retry:` the server sent.
import { EventSource } from "eventsource";

const source = new EventSource(process.env.STREAM_URL);
const print = (event) =>
  console.log("EVENT " + JSON.stringify({ id: event.lastEventId, type: event.type, data: event.data }));
for (const name of (process.env.EVENT_NAMES || "message").split(",")) {
  source.addEventListener(name, print);
}
source.addEventListener("sse-fanout-reset", print);
source.onopen = () => console.log("OPEN");
source.onerror = (error) => console.log("ERROR " + (error?.message ?? ""));
process.stdin.on("end", () => {
  source.close();
  process.exit(0);
});
process.stdin.resume();
