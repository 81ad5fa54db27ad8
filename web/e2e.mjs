// End-to-end check of the web client in headless Chromium (playwright-core + Debian's
// chromium): a browser user on WebSocket and a CLI user on TCP chat both ways, with
// receipts shown as ticks and a group message; a screenshot proves the page renders.
//
// Usage: node e2e.mjs PAGE_URL TCP_ADDR CHAT_BIN CHROMIUM SCREENSHOT
import { chromium } from "playwright-core";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { statSync } from "node:fs";

const [pageUrl, tcp, chatBin, chromiumPath, screenshot] = process.argv.slice(2);
const run = promisify(execFile);
const chat = (...args) => run(chatBin, ["--server", tcp, ...args], { timeout: 20000 });
const ok = (what) => console.log(`ok: ${what}`);

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(pageUrl);
  await page.waitForSelector("#status:text('connected')");
  await page.fill("#user", "web");
  await page.fill("#password", "pweb");
  await page.click("#register");
  await page.waitForSelector("#status:text('registered')");
  await chat("register", "cli", "--password", "pcli");
  // An offline message for the browser user, waiting before it logs in.
  await chat("--user", "cli", "--password", "pcli", "send", "web", "sent while you were away");
  await page.click("#login-btn");
  await page.waitForSelector("#me:text('web')");
  await page.waitForSelector("#messages .text:text('sent while you were away')");
  ok("browser user registered, logged in and got the offline message");

  await chat("--user", "cli", "--password", "pcli", "send", "web", "hello browser");
  await page.waitForSelector("#messages .text:text('hello browser')");
  ok("live message from the CLI user shown");

  await page.fill("#to", "@cli");
  await page.fill("#text", "hello terminal");
  await page.click("#send");
  await page.waitForSelector(".msg.mine:has(.text:text('hello terminal')) .tick:text('✓')");
  ok("message from the browser sent (one tick)");
  const { stdout } = await chat("--user", "cli", "--password", "pcli", "recv", "--wait", "2");
  if (!stdout.includes("web -> cli: hello terminal")) throw new Error(`CLI did not get it:\n${stdout}`);
  await page.waitForSelector(".msg.mine:has(.text:text('hello terminal')) .tick:text('✓✓')");
  ok("CLI user received it and the browser shows the delivered receipt (two ticks)");

  await page.fill("#group", "team");
  await page.click("#create");
  await page.waitForSelector("#groups li:text('#team')");
  await chat("--user", "cli", "--password", "pcli", "group-join", "team");
  await chat("--user", "cli", "--password", "pcli", "group-send", "team", "hello team");
  await page.waitForSelector(".msg:has(.who:text('#team')) .text:text('hello team')");
  ok("group message shown");

  await page.waitForSelector("#online li:text('web')");
  await page.screenshot({ path: screenshot, fullPage: true });
  if (statSync(screenshot).size < 5000) throw new Error("the screenshot is nearly empty");
  ok("page rendered and screenshot taken");
} finally {
  await browser.close();
}
