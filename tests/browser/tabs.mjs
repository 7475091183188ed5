// Opens a page that opens TABS EventSources to its own origin, in headless Chromium; driven by
// tests/tls.rs over stdin/stdout. Prints "OPENED n PROTOCOL p" once the count of open streams has
// stopped growing (p: the page's own HTTP version, "h2" or "http/1.1"), then waits for
// "PUBLISHED" on stdin and prints "RECEIVED n" once the open streams have their event (or after
// 10 s). With CERT set, Chromium trusts that certificate's key (SPKI pinning), as a browser
// trusts a CA.
import { chromium } from "playwright-core";
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"];
if (process.env.CERT) {
  const spki = new X509Certificate(readFileSync(process.env.CERT)).publicKey
    .export({ type: "spki", format: "der" });
  args.push("--ignore-certificate-errors-spki-list=" + createHash("sha256").update(spki).digest("base64"));
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args,
});
const page = await browser.newPage();
page.on("console", (m) => console.error("page:", m.text()));
await page.goto(process.env.PAGE_URL);
const count = (name) => page.evaluate((n) => window[n], name);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Open streams: until the count has not grown for 2 s (the browser queues what it cannot open).
let opened = -1, still = 0;
while (still < 20) {
  const now = await count("opened");
  still = now === opened ? still + 1 : 0;
  opened = now;
  await sleep(100);
}
const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
console.log(`OPENED ${opened} PROTOCOL ${protocol}`);

const input = createInterface({ input: process.stdin });
await new Promise((resolve) => input.on("line", (line) => line.trim() === "PUBLISHED" && resolve()));
const deadline = Date.now() + 10000;
while ((await count("received")) < opened && Date.now() < deadline) await sleep(50);
console.log(`RECEIVED ${await count("received")}`);
await browser.close();
process.exit(0);
