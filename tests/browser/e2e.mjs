// Opens the demo page in headless Chromium and reports what it shows. Driven by tests/browser.rs
// over stdin/stdout: prints READY once the page's EventSource is open, "SEEN n" whenever the page
// shows n events, and waits for "DONE <n>" on stdin before the final screenshot and the FOLDED
// (long payloads shown folded), NAMES and ROWS lines.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const url = process.env.PAGE_URL;
const shot = process.env.SCREENSHOT;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
page.on("console", (m) => console.error("page:", m.text()));
await page.goto(url);
await page.waitForSelector("#status.open", { timeout: 15000 });
console.log("READY");

const rows = async () =>
  (await page.$$eval("#events tr.event td.data", (tds) => tds.map((td) => td.textContent))).reverse();

let reported = 0;
const input = createInterface({ input: process.stdin });
let want = Infinity;
input.on("line", (line) => {
  const m = /^DONE (\d+)$/.exec(line.trim());
  if (m) want = Number(m[1]);
});
const deadline = Date.now() + 60000;
for (;;) {
  const seen = await rows();
  if (seen.length !== reported) {
    reported = seen.length;
    console.log(`SEEN ${reported}`);
  }
  if (seen.length >= want || Date.now() > deadline) break;
  await page.waitForTimeout(100);
}
await page.screenshot({ path: shot, fullPage: true });
console.log("FOLDED " + (await page.$$eval("td.data div.fold:not(.open)", (els) => els.length)));
console.log("NAMES " + JSON.stringify(
  (await page.$$eval("#events tr.event td.name", (tds) => tds.map((td) => td.textContent))).reverse()));
console.log("ROWS " + JSON.stringify(await rows()));
await browser.close();
process.exit(0);
