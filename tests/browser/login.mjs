// The cookie-session example application (examples/cookie_app.rs) used in headless Chromium,
// for tests/auth_callout.rs, which reads what this prints. APP_URL is the application's origin,
// whose /app page opens an EventSource to the hub (another origin, with credentials) and keeps
// what it sees in window.seen.
//
// 1. Opens /app before logging in: the hub refuses the stream (the application says 401), the
//    EventSource fails for good. Prints "REFUSED <readyState>".
// 2. Logs in through the application's form (it sets its session cookie), lands on /app, whose
//    stream opens. Prints "OPENED".
// 3. Clicks "Ship order 7" (the application publishes to the user's session through the hub),
//    waits for the event. Prints "RECEIVED <data>".
// 4. Clicks "Log out" (the application disconnects the session through the hub), waits for the
//    goodbye, on which the page closes its EventSource. Prints "CLOSED <goodbye data> <readyState>".
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage();
page.on("console", (m) => console.error("page:", m.text()));
const app = process.env.APP_URL;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const seen = () => page.evaluate(() => window.seen);
async function until(what, test) {
  const deadline = Date.now() + 15000;
  for (;;) {
    const now = await seen();
    if (test(now)) return now;
    if (Date.now() > deadline) {
      console.log(`TIMEOUT ${what} ${JSON.stringify(now)}`);
      await browser.close();
      process.exit(1);
    }
    await sleep(50);
  }
}

await page.goto(`${app}/app`);
let now = await until("refusal", (s) => s.errors > 0 && s.state === 2);
console.log(`REFUSED ${now.state}`);

await page.goto(`${app}/`);
await page.click("#login");
await page.waitForURL(`${app}/app`);
await until("open", (s) => s.open);
console.log("OPENED");

await page.click("#ship");
now = await until("event", (s) => s.events.length > 0);
console.log(`RECEIVED ${now.events[0]}`);

await page.click("#logout");
now = await until("goodbye", (s) => s.goodbye !== null);
console.log(`CLOSED ${now.goodbye} ${now.state}`);
await browser.close();
process.exit(0);
