// End-to-end test of the web client in headless Chromium (playwright-core with Debian's
// chromium), driven by tests/tests/web.rs against a three-node cluster: two browser
// users (alice on node 0, bob on node 1) and a CLI user (carol) chat privately and in
// a group; unread counts, history, read ticks, the length limit, a reload, layout at
// two widths, contacts with presence, typing, blocking and privacy, group settings
// (a private group, an invitation accepted from the prompt, roles), files (an image
// picked with the attach button, a file dropped onto the conversation, refusals), and
// the loss of alice's node. Elements are found by role and accessible
// name. Every wait polls until a deadline; any console or page error fails the run.
//
// Usage: node e2e.mjs '{"pages":[URL,URL,URL],"cli_servers":[ADDR,...],"chat":BIN,
//                        "chromium":PATH,"shots":DIR}'
// It prints "ok: STEP" per step. To kill node N it prints "@@kill N" and waits for
// the line "killed" on stdin.
import { chromium } from "playwright-core";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { readFile } from "node:fs/promises";

const cfg = JSON.parse(process.argv[2]);
const run = promisify(execFile);
const servers = cfg.cli_servers.flatMap((s) => ["--server", s]);
const chat = (...args) => run(cfg.chat, [...servers, ...args], { timeout: 20000 });
const carol = (...args) => chat("--user", "carol", "--password", "pcarol", ...args);
const ok = (what) => console.log(`ok: ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- harness ------------------------------------------------------------------------

const harnessLines = createInterface({ input: process.stdin });
const harness = harnessLines[Symbol.asyncIterator]();
async function killNode(n) {
  console.log(`@@kill ${n}`);
  const { value } = await harness.next();
  if (value !== "killed") throw new Error(`the harness did not kill node ${n}: ${value}`);
}

/** Polls `check` (true when done; anything else, or a throw, is the reason to go on)
 * every 100 ms until `timeout`. */
async function until(what, check, timeout = 15000) {
  const end = Date.now() + timeout;
  for (;;) {
    let last;
    try {
      last = await check();
      if (last === true) return;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${last})`);
    await sleep(100);
  }
}

const problems = [];
function watch(page, who) {
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${who}: console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${who}: page error: ${e.message}`));
}
function noProblems(when) {
  if (problems.length) throw new Error(`browser errors ${when}:\n${problems.join("\n")}`);
}

// ---- the page, by role and name -----------------------------------------------------------

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const exact = (s) => new RegExp(`^${escape(s)}$`);
const status = (page) => page.getByRole("status");
const nav = (page) => page.getByRole("navigation", { name: "Conversations" });
const log = (page) => page.getByRole("log", { name: "Messages" });
const messageBox = (page) => page.getByRole("textbox", { name: "Message", exact: true });
const button = (page, name) => page.getByRole("button", { name, exact: true });
/** A conversation in the list: its accessible name starts with its name. */
const conversation = (page, name) => nav(page).getByRole("button", { name: new RegExp(`^${escape(name)}(,|$)`) });
/** The messages whose text is exactly `text`. */
const message = (page, text) => log(page).locator("li.msg").filter({ has: page.locator(".text", { hasText: exact(text) }) });
const tick = (page, text, label) => message(page, text).locator(`.tick[aria-label="${label}"]`);

const tab = (page, name) => page.getByRole("tab", { name, exact: true });
/** A row of the contacts panel (contacts and requests both ways). */
const contactRow = (page, user) => page.getByRole("list", { name: "Contacts and requests" }).locator(`li[data-user="${user}"]`);
const typingLine = (page) => page.locator("#typing");
const groupPanel = (page) => page.getByRole("region", { name: "Group settings" });
const invitation = (page) => page.getByRole("region", { name: "Invitation" });
/** A member's row in the open group's settings panel. */
const memberRow = (page, user) => groupPanel(page).getByRole("list", { name: "Members" }).locator(`li[data-user="${user}"]`);
/** The open group's members as the panel lists them, "name:role", in its order. */
const members = (page) =>
  groupPanel(page).getByRole("list", { name: "Members" }).locator("li").evaluateAll((lis) => lis.map((li) => `${li.dataset.user}:${li.dataset.role}`).join(" "));
/** Waits until `user`'s role badge in the panel reads `role`. */
const badge = (page, user, role) => memberRow(page, user).locator(".role", { hasText: exact(role) }).waitFor();

async function connected(page, timeout = 15000) {
  await status(page).filter({ hasText: /^Connected to / }).waitFor({ timeout });
}

async function register(page, user, password) {
  await page.getByRole("textbox", { name: "Username" }).fill(user);
  await page.getByRole("textbox", { name: "Password" }).fill(password);
  await button(page, "Register").click();
  await connected(page);
  await nav(page).waitFor();
}

async function openChat(page, name) {
  await page.getByRole("textbox", { name: /^Chat with/ }).fill(name);
  await button(page, "Open").click();
  await page.getByRole("heading", { name: name.replace(/^@/, ""), exact: true }).waitFor();
}

/** Writes `text` and sends it with the Send button (Enter is used elsewhere). */
async function send(page, text) {
  await messageBox(page).fill(text);
  await button(page, "Send").click();
  await message(page, text).last().waitFor();
}

async function count(page, text) {
  return message(page, text).count();
}

/** Layout problems: anything visible cut off at the sides, a page wider than the
 * viewport or taller than it (the lists scroll inside their panels), and the composer
 * outside the viewport. */
async function layoutProblems(page, composer) {
  return page.evaluate((composer) => {
    const out = [];
    const vw = document.documentElement.clientWidth;
    const vh = window.innerHeight;
    const root = document.scrollingElement;
    if (root.scrollWidth > vw) out.push(`the page scrolls sideways (${root.scrollWidth} > ${vw})`);
    if (root.scrollHeight > vh) out.push(`the page is taller than the viewport (${root.scrollHeight} > ${vh})`);
    const name = (el) => el.id || el.getAttribute("aria-label") || `${el.tagName.toLowerCase()}.${el.className}`;
    for (const el of document.querySelectorAll("body *")) {
      if (el.closest(".visually-hidden")) continue;
      const r = el.getBoundingClientRect();
      if (!r.width || !r.height || getComputedStyle(el).visibility === "hidden") continue;
      if (r.left < -0.5 || r.right > vw + 0.5) out.push(`${name(el)} is cut off (${r.left}..${r.right} of ${vw})`);
    }
    for (const id of composer ? ["message", "send"] : []) {
      const r = document.getElementById(id).getBoundingClientRect();
      if (!r.width || r.top < 0 || r.bottom > vh || r.left < 0 || r.right > vw) {
        out.push(`#${id} is not within the viewport (${JSON.stringify(r)})`);
      }
    }
    return out;
  }, composer);
}

async function checkLayout(page, width, height, shot, { composer = true } = {}) {
  await page.setViewportSize({ width, height });
  if (composer) await messageBox(page).waitFor();
  const found = await layoutProblems(page, composer);
  await page.screenshot({ path: join(cfg.shots, shot) });
  if (found.length) throw new Error(`layout at ${width} px:\n${found.join("\n")}`);
}

// ---- the run ------------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // Separate contexts: each user has their own localStorage, as on their own machine.
  const newPage = async (who, url, init) => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    if (init) await context.addInitScript(init);
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    watch(page, who);
    await page.goto(url);
    return page;
  };
  const alice = await newPage("alice", cfg.pages[0]);
  // bob's notifications are recorded, not shown: headless Chromium has no desktop.
  const bob = await newPage("bob", cfg.pages[1], () => {
    window.__notified = [];
    window.Notification = class {
      static permission = "default";
      static requestPermission() {
        window.Notification.permission = "granted";
        return Promise.resolve("granted");
      }
      constructor(title, options) {
        window.__notified.push(`${title}: ${options.body}`);
      }
      close() {}
    };
  });

  await hiddenBeforeLogin(alice);
  ok("conversation panel hidden before login");

  // A wrong password says so, in words.
  await alice.getByRole("textbox", { name: "Username" }).fill("nobody");
  await alice.getByRole("textbox", { name: "Password" }).fill("wrong");
  await button(alice, "Log in").click();
  await alice.getByRole("alert").filter({ hasText: "Wrong username or password." }).waitFor();
  await register(alice, "alice", "palice");
  await register(bob, "bob", "pbob");
  await chat("register", "carol", "--password", "pcarol");

  // Messages for alice while she looks elsewhere: two from carol, three from bob.
  await carol("send", "alice", "hello alice from the terminal");
  await carol("send", "alice", "are you there?");
  await openChat(bob, "alice");
  for (let i = 1; i <= 3; i++) {
    await messageBox(bob).fill(`count ${i}`);
    await messageBox(bob).press("Enter");
  }
  await conversation(alice, "bob, 3 unread, last from bob: count 3").waitFor();
  await conversation(alice, "carol, 2 unread, last from carol: are you there?").waitFor();
  const first = await nav(alice).getByRole("list").getByRole("button").first().getAttribute("aria-label");
  if (!first.startsWith("bob")) throw new Error(`the most recent conversation is not first: ${first}`);
  ok("unread counts and previews");

  await conversation(alice, "carol").click();
  await message(alice, "hello alice from the terminal").waitFor();
  await message(alice, "are you there?").waitFor();
  await conversation(alice, "carol, last from carol: are you there?").waitFor();
  await conversation(alice, "bob").click();
  await message(alice, "count 3").waitFor();
  await log(alice).getByRole("separator").filter({ hasText: "Today" }).first().waitFor();
  // A group with a longer past than alice's inbox holds: she joins after 60 messages.
  await bob.getByRole("textbox", { name: /^Chat with/ }).fill("lobby");
  await button(bob, "Create group").click();
  await button(bob, "Create").click();
  await bob.getByRole("heading", { name: "#lobby", exact: true }).waitFor();
  for (let i = 1; i <= 60; i++) {
    await messageBox(bob).fill(`lobby ${i}`);
    await messageBox(bob).press("Enter");
  }
  await tick(bob, "lobby 60", "sent").waitFor();
  await alice.getByRole("textbox", { name: /^Chat with/ }).fill("#lobby");
  await button(alice, "Join group").click();
  await message(alice, "lobby 60").waitFor();
  if ((await count(alice, "lobby 1")) !== 0) throw new Error("the first page of history holds the oldest message");
  // Scrolling to the top loads the older page.
  await until("older messages on scrolling up", async () => {
    await log(alice).evaluate((el) => (el.scrollTop = 0));
    return (await count(alice, "lobby 1")) === 1 || "not yet";
  });
  await log(alice).getByText("Beginning of the conversation").waitFor();
  const list = await log(alice).evaluate((el) => ({ scroll: el.scrollHeight, client: el.clientHeight }));
  if (list.scroll <= list.client) throw new Error("the message list does not scroll inside its panel");
  ok("history on opening a conversation");

  // Private chat with the CLI user, both ways, with the delivered tick.
  await conversation(alice, "carol").click();
  await send(alice, "hi carol, from the browser");
  const { stdout } = await carol("recv", "--wait", "2");
  if (!stdout.includes("alice -> carol: hi carol, from the browser")) throw new Error(`carol did not get it:\n${stdout}`);
  await tick(alice, "hi carol, from the browser", "delivered").waitFor();
  // A user who does not exist is said so, and no empty conversation stays behind.
  await alice.getByRole("textbox", { name: /^Chat with/ }).fill("nobody");
  await button(alice, "Open").click();
  await alice.getByRole("alert").filter({ hasText: "User nobody not found" }).waitFor();
  await conversation(alice, "nobody").waitFor({ state: "detached" });
  ok("private chat with the CLI user");

  // Read ticks: bob has alice's conversation open, so what she sends is read at once;
  // and what alice read of bob's (above) shows as read on his side.
  await conversation(bob, "alice").click();
  await conversation(alice, "bob").click();
  await send(alice, "are you there, bob?");
  await message(bob, "are you there, bob?").waitFor();
  await tick(alice, "are you there, bob?", "read").waitFor();
  await tick(bob, "count 3", "read").waitFor();
  // Shift+Enter adds a line; Enter sends.
  await messageBox(bob).fill("line one");
  await messageBox(bob).press("Shift+Enter");
  await messageBox(bob).pressSequentially("line two");
  await messageBox(bob).press("Enter");
  await message(alice, "line one\nline two").waitFor();
  ok("read ticks");

  // The message menu: bob answers alice's message, she edits it, he reacts, she deletes
  // it for everyone; each side sees the other's doing.
  const menuButton = (page, text) => message(page, text).getByRole("button", { name: "Message actions", exact: true });
  const menu = (page) => log(page).getByRole("group", { name: "Message actions" });
  await send(alice, "lunch today?");
  await message(bob, "lunch today?").waitFor();
  await menuButton(bob, "lunch today?").click();
  await button(bob, "Reply").waitFor();
  for (const mineOnly of ["Edit", "Delete for everyone"]) {
    if (await menu(bob).getByRole("button", { name: mineOnly, exact: true }).count()) throw new Error(`bob is offered ${mineOnly} on alice's message`);
  }
  await button(bob, "Reply").click();
  await bob.locator("#compose-what").filter({ hasText: "Replying to alice: lunch today?" }).waitFor();
  await messageBox(bob).fill("yes, right here");
  await messageBox(bob).press("Enter");
  await message(alice, "yes, right here").locator(".quote", { hasText: "lunch today?" }).waitFor();
  await menuButton(alice, "lunch today?").click();
  await button(alice, "Edit").click();
  if ((await messageBox(alice).inputValue()) !== "lunch today?") throw new Error("editing does not start from the message's text");
  await messageBox(alice).fill("lunch tomorrow?");
  await messageBox(alice).press("Enter");
  await message(bob, "lunch tomorrow?").locator(".edited").waitFor();
  await message(bob, "yes, right here").locator(".quote", { hasText: "lunch tomorrow?" }).waitFor();
  await message(alice, "lunch tomorrow?").locator(".edited").waitFor();
  await menuButton(bob, "lunch tomorrow?").click();
  await button(bob, "React 👍").click();
  await message(alice, "lunch tomorrow?").locator(".reaction", { hasText: "👍 1" }).waitFor();
  await message(bob, "lunch tomorrow?").locator(".reaction.mine", { hasText: "👍 1" }).waitFor();
  await menuButton(alice, "lunch tomorrow?").click();
  alice.once("dialog", (d) => d.accept());
  await button(alice, "Delete for everyone").click();
  await message(bob, "(message deleted)").waitFor();
  await message(alice, "(message deleted)").waitFor();
  if ((await count(bob, "lunch tomorrow?")) !== 0) throw new Error("the deleted text is still shown");
  if (await menuButton(bob, "(message deleted)").count()) throw new Error("a deleted message offers actions");
  await message(bob, "yes, right here").locator(".quote", { hasText: "(message deleted)" }).waitFor();
  ok("reply, edit, react and delete from the message menu");

  // A group of three: created and joined in the browsers, joined by the CLI user.
  await alice.getByRole("textbox", { name: /^Chat with/ }).fill("team");
  await button(alice, "Create group").click();
  await button(alice, "Create").click();
  await alice.getByRole("heading", { name: "#team", exact: true }).waitFor();
  await bob.getByRole("textbox", { name: /^Chat with/ }).fill("#team");
  await button(bob, "Join group").click();
  await bob.getByRole("heading", { name: "#team", exact: true }).waitFor();
  await carol("group-join", "team");
  await conversation(bob, "alice").click();
  await send(alice, "hello team");
  await conversation(bob, "#team, 1 unread, last from alice: hello team").waitFor();
  await conversation(bob, "#team").click();
  await message(bob, "hello team").locator(".who", { hasText: "alice" }).waitFor();
  await carol("group-send", "team", "hi from carol");
  await message(alice, "hi from carol").waitFor();
  await message(bob, "hi from carol").waitFor();
  const { stdout: got } = await carol("recv", "--wait", "2");
  if (!got.includes("alice -> #team: hello team")) throw new Error(`carol did not get the group message:\n${got}`);
  // bob has read it and carol's device has it: delivered to every member.
  await tick(alice, "hello team", "delivered").waitFor();
  await button(alice, "Group settings").click();
  await until("the members", async () => (await members(alice)) === "alice:owner bob:member carol:member" || members(alice));
  await groupPanel(alice).getByText("Public · owner alice").waitFor();
  await button(bob, "Leave group").click();
  await conversation(bob, "#team").waitFor({ state: "detached" });
  // The open panel follows the group's events by itself.
  await until("bob to be gone", async () => (await members(alice)) === "alice:owner carol:member" || members(alice));
  await button(alice, "Group settings").click(); // closes it
  await groupPanel(alice).waitFor({ state: "hidden" });
  ok("group chat");

  // A private group with a title: alice (node 0) invites bob (node 1), who accepts from
  // the prompt; she makes him an admin, and his page offers what an admin may do and
  // not what only the owner may.
  await alice.getByRole("textbox", { name: /^Chat with/ }).fill("club");
  await button(alice, "Create group").click();
  await alice.getByRole("textbox", { name: "Title of the new group (optional)" }).fill("The club");
  await alice.getByRole("checkbox", { name: "Private: by invitation only" }).check();
  await button(alice, "Create").click();
  await alice.getByRole("heading", { name: "#club", exact: true }).waitFor();
  await button(alice, "Group settings").click();
  await groupPanel(alice).getByText("The club · Private (by invitation) · owner alice").waitFor();
  await badge(alice, "alice", "owner");
  if (await button(alice, "Leave group").isVisible()) throw new Error("the owner is offered to leave");
  const invite = (page) => groupPanel(page).getByRole("textbox", { name: "Invite a user" });
  // carol is banned (from the CLI): inviting her is refused below, in words.
  await chat("--user", "alice", "--password", "palice", "group-ban", "club", "carol");
  await invite(alice).fill("bob");
  await button(alice, "Invite").click();
  await until("the invitation to be sent", async () => (await invite(alice).inputValue()) === "" || "not yet");
  await conversation(bob, "#club, last from alice: alice invited you").click();
  await invitation(bob).getByText("alice invited you to #club.").waitFor();
  if (await messageBox(bob).isVisible()) throw new Error("the composer shows before the invitation is accepted");
  await button(bob, "Accept").click();
  await invitation(bob).waitFor({ state: "hidden" });
  await send(bob, "glad to be in the club");
  await message(alice, "glad to be in the club").waitFor();
  await badge(alice, "bob", "member");
  await button(alice, "Make bob an admin").click();
  await badge(alice, "bob", "admin");
  await button(alice, "Make bob a member").waitFor();
  await button(bob, "Group settings").click();
  await badge(bob, "bob", "admin");
  await badge(bob, "alice", "owner");
  // An admin invites to a private group, edits the topic, unbans; the owner's own
  // actions are not offered, nor anything against the owner.
  await invite(bob).waitFor();
  await groupPanel(bob).getByRole("textbox", { name: "Unban a user" }).waitFor();
  await groupPanel(bob).getByRole("textbox", { name: "Topic" }).fill("board games");
  await button(bob, "Save").click();
  await groupPanel(alice).getByText("Topic: board games").waitFor();
  for (const name of ["Delete group", "Make alice a member", "Remove alice", "Ban alice", "Hand #club over to alice"]) {
    if (await button(bob, name).count()) throw new Error(`an admin is offered "${name}"`);
  }
  if (await button(bob, "Leave group").isHidden()) throw new Error("an admin is not offered to leave");
  await invite(bob).fill("carol");
  await button(bob, "Invite").click();
  await groupPanel(bob).getByRole("alert").filter({ hasText: "Not allowed: that user is banned from this group: unban first." }).waitFor();
  await groupPanel(bob).getByRole("textbox", { name: "Unban a user" }).fill("carol");
  await button(bob, "Unban").click();
  await message(bob, "you unbanned carol").waitFor();
  await button(bob, "Invite").click();
  await message(alice, "bob invited carol").waitFor();
  await carol("group-join", "club");
  await button(bob, "Remove carol").waitFor();
  await button(bob, "Ban carol").waitFor();
  if (await button(bob, "Make carol an admin").count()) throw new Error("an admin is offered to name admins");
  await button(alice, "Make carol an admin").waitFor();
  await button(alice, "Delete group").waitFor();
  await button(alice, "Group settings").click();
  await button(bob, "Group settings").click();
  noProblems("with group settings");
  ok("group settings, invitation and roles");
  await conversation(alice, "#team").click();

  // Empty messages are not sent; an oversized one is refused before sending, in words,
  // and the session goes on.
  const before = await log(alice).locator("li.msg").count();
  await messageBox(alice).fill("   ");
  await messageBox(alice).press("Enter");
  await send(alice, "still a conversation");
  if ((await log(alice).locator("li.msg").count()) !== before + 1) throw new Error("an empty message was sent");
  await messageBox(alice).fill("x".repeat(20000));
  await alice.locator("#limit").filter({ hasText: "Too long: 20000 bytes; at most 16384" }).waitFor();
  await messageBox(alice).press("Enter");
  await alice.getByRole("alert").filter({ hasText: /too long: 20000 bytes, and at most 16384/ }).waitFor();
  await messageBox(alice).fill("still here after the long one");
  await messageBox(alice).press("Enter");
  await tick(alice, "still here after the long one", "sent").waitFor();
  await connected(alice, 1000);
  ok("oversized message refused");

  await files(alice, bob);
  ok("files: an image shown by its preview, a file by a link, refusals in words");

  // A reload keeps the session: no login form, the conversations and their history.
  await alice.reload();
  await connected(alice);
  if (await alice.getByRole("button", { name: "Log in", exact: true }).isVisible()) throw new Error("the login form is back");
  // Her own group message is the group's last, though only others' are in her inbox.
  await conversation(alice, "#team, last from you: still here after the long one").waitFor();
  await conversation(alice, "carol").waitFor();
  await conversation(alice, "bob").click();
  await message(alice, "are you there, bob?").waitFor();
  await tick(alice, "are you there, bob?", "read").waitFor();
  // Files come back with the history, the image with its preview.
  await log(alice).getByRole("button", { name: /^Open image sunset\.png, / }).waitFor();
  await log(alice).getByRole("link", { name: "Download notes.txt, 146 KB" }).waitFor();
  ok("session survives a reload");

  await checkLayout(alice, 1280, 800, "desktop-1280.png");
  ok("layout at 1280 px");
  await conversation(bob, "alice").click();
  await checkLayout(bob, 390, 844, "phone-390.png");
  await button(bob, "Back to conversations").click();
  await nav(bob).waitFor();
  await checkLayout(bob, 390, 844, "phone-390-list.png", { composer: false });
  await conversation(bob, "alice").click();
  await checkLayout(bob, 360, 740, "phone-360.png");
  ok("layout at 390 px (and 360 px)");

  // Desktop notifications, once allowed, for messages that come while the tab is hidden.
  await button(bob, "Enable notifications").click();
  await button(bob, "Enable notifications").waitFor({ state: "hidden" });
  const setHidden = (page, hidden) => page.evaluate((hidden) => {
    Object.defineProperty(document, "visibilityState", { value: hidden ? "hidden" : "visible", configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
  await setHidden(bob, true);
  // bob has alice's conversation open, but hidden it is not read: delivered only.
  await send(alice, "are you reading?");
  await tick(alice, "are you reading?", "delivered").waitFor();
  if (await tick(alice, "are you reading?", "read").count()) throw new Error("read while the tab was hidden");
  await carol("send", "bob", "knock knock");
  await until("the notifications", async () => {
    const seen = await bob.evaluate(() => window.__notified);
    return (seen.includes("alice: are you reading?") && seen.includes("carol: knock knock")) || seen.join("; ");
  });
  await setHidden(bob, false);
  await tick(alice, "are you reading?", "read").waitFor();
  ok("notifications while hidden, and read once seen");

  // Contacts across two nodes: alice (node 0) asks, bob (node 1, on a phone) sees the
  // request counted on his Contacts tab and accepts; then both see the other online.
  await tab(alice, "Contacts").click();
  await alice.getByRole("textbox", { name: "Add a contact" }).fill("bob");
  await button(alice, "Add").click();
  await contactRow(alice, "bob").filter({ hasText: "request sent, pending" }).waitFor();
  await button(bob, "Back to conversations").click();
  await tab(bob, "Contacts, 1 request").click();
  await contactRow(bob, "alice").filter({ hasText: "wants to be your contact" }).waitFor();
  await checkLayout(bob, 360, 740, "phone-360-contacts.png", { composer: false });
  await button(bob, "Accept alice").click();
  for (const [page, other] of [[alice, "bob"], [bob, "alice"]]) {
    await contactRow(page, other).filter({ hasText: "online" }).locator(".dot.online").waitFor();
  }
  await tab(bob, "Contacts").waitFor(); // no request waits any more
  await checkLayout(alice, 1280, 800, "desktop-1280-contacts.png");
  await button(bob, "Chat with alice").click();
  await bob.locator("#conv-presence").filter({ hasText: "online" }).waitFor();
  noProblems("with contacts");
  ok("contact request accepted, both online");

  // Typing in one page shows in the other, and goes when the field is cleared (well
  // before the notice's own expiry, 6 s) or the message is sent.
  await tab(alice, "Chats").click();
  await conversation(alice, "bob").click();
  await messageBox(alice).pressSequentially("hel");
  await typingLine(bob).filter({ hasText: "alice is typing…" }).waitFor();
  await checkLayout(bob, 360, 740, "phone-360-typing.png");
  await messageBox(alice).fill("");
  await typingLine(bob).filter({ hasText: "typing" }).waitFor({ state: "detached", timeout: 4500 });
  await messageBox(alice).pressSequentially("hello again");
  await typingLine(bob).filter({ hasText: "alice is typing…" }).waitFor();
  await button(alice, "Send").click();
  await message(bob, "hello again").waitFor();
  await typingLine(bob).filter({ hasText: "typing" }).waitFor({ state: "detached", timeout: 4500 });
  ok("typing shown and gone");

  // bob blocks alice from their conversation: her message is refused, in words.
  await button(bob, "Block").click();
  await button(bob, "Unblock").waitFor();
  await messageBox(alice).fill("can you hear me?");
  await button(alice, "Send").click();
  await alice.getByRole("alert").filter({ hasText: "Not sent: bob does not accept messages from you" }).waitFor();
  await message(alice, "can you hear me?").locator(".fail").waitFor();
  if (await count(bob, "can you hear me?")) throw new Error("bob got a message from a user he blocks");
  await button(bob, "Unblock").click();
  await button(bob, "Block").waitFor();
  await send(alice, "unblocked now");
  await message(bob, "unblocked now").waitFor();
  // Contacts only: carol (no contact of bob's) is refused, alice (a contact) is not.
  await button(bob, "Back to conversations").click();
  await tab(bob, "Contacts").click();
  await bob.getByRole("checkbox", { name: "Only contacts may message me" }).check();
  await until("carol to be refused", async () => {
    try {
      await carol("send", "bob", "only contacts?");
      return "carol's message was taken";
    } catch (e) {
      return /does not accept messages/.test(`${e.stderr}${e.stdout}`) || `${e.stderr}`;
    }
  });
  await send(alice, "from a contact");
  await bob.reload();
  await connected(bob);
  await tab(bob, "Contacts").click();
  const only = bob.getByRole("checkbox", { name: "Only contacts may message me" });
  await until("the setting to be read back", async () => (await only.isChecked()) || "unchecked");
  await only.uncheck();
  await until("the setting to be saved", async () => (await only.isEnabled()) || "saving");
  await carol("send", "bob", "everyone again");
  await tab(bob, "Chats").click();
  await conversation(bob, "alice").click();
  await message(bob, "from a contact").waitFor();
  noProblems("with blocking");
  ok("blocking and contacts only refuse messages");

  // alice's node dies under her; she writes meanwhile, and so does carol.
  noProblems("before the failover");
  await alice.evaluate(() => {
    window.__states = [];
    const el = document.querySelector('[role="status"]');
    new MutationObserver(() => window.__states.push(el.textContent)).observe(el, { childList: true, subtree: true });
  });
  const nodeBefore = await status(alice).textContent();
  // A burst of messages with the node killed in the middle of it: one in flight when
  // it dies is sent again with its client_msg_id, and must not be stored twice.
  const burst = Array.from({ length: 12 }, (_, i) => `burst ${i + 1}`);
  const typing = (async () => {
    for (const text of burst) {
      await messageBox(alice).fill(text);
      await messageBox(alice).press("Enter");
    }
  })();
  await until("the burst to be under way", async () => (await count(alice, "burst 3")) === 1 || "not yet");
  await killNode(0);
  await typing;
  await until("the page to show the lost connection", async () => {
    const states = await alice.evaluate(() => window.__states);
    return states.some((s) => /^(Connection lost|Reconnecting)/.test(s)) || states.join(",");
  });
  await messageBox(alice).fill("sent during the outage");
  await messageBox(alice).press("Enter");
  await until("carol's message to be taken", async () => {
    await carol("send", "alice", "carol writes during the outage");
    return true;
  }, 40000);
  await connected(alice, 40000);
  const nodeAfter = await status(alice).textContent();
  if (nodeAfter === nodeBefore) throw new Error(`still on the same node: ${nodeAfter}`);
  await tick(alice, "sent during the outage", "sent").or(tick(alice, "sent during the outage", "delivered"))
    .or(tick(alice, "sent during the outage", "read")).waitFor({ timeout: 20000 });
  await send(alice, "sent after the outage");
  ok(`reconnected to another node (${nodeBefore} -> ${nodeAfter})`);

  const outage = [...burst, "sent during the outage", "sent after the outage"];
  for (const text of outage) {
    await until(`bob to get "${text}" once`, async () => (await count(bob, text)) === 1 || (await count(bob, text)), 30000);
    if ((await count(alice, text)) !== 1) throw new Error(`alice shows "${text}" ${await count(alice, text)} times`);
  }
  await conversation(alice, "carol").click();
  await until("carol's message once", async () => (await count(alice, "carol writes during the outage")) === 1 || "no", 20000);
  // Nothing doubled on a fresh load of everything either.
  await bob.reload();
  await connected(bob);
  await conversation(bob, "alice").click();
  for (const text of outage) {
    await message(bob, text).first().waitFor();
    if ((await count(bob, text)) !== 1) throw new Error(`after a reload bob shows "${text}" ${await count(bob, text)} times`);
  }
  ok("every message once");

  // Logging out forgets the session; an expired (here: made up) token means the login form.
  // (bob's page: alice's came from the node killed above.)
  await button(bob, "Log out").click();
  await bob.getByRole("textbox", { name: "Username" }).waitFor();
  await bob.reload();
  await bob.getByRole("button", { name: "Log in", exact: true }).waitFor();
  if (await nav(bob).isVisible()) throw new Error("logged in again after logging out");
  await bob.evaluate(() => localStorage.setItem("chat.session", JSON.stringify({ user: "bob", token: "made-up" })));
  await bob.reload();
  await bob.getByRole("alert").filter({ hasText: "Your session has expired" }).waitFor();
  await bob.getByRole("textbox", { name: "Username" }).waitFor();
  ok("logout and an expired session");

  // A message that waited for bob is acknowledged as delivered when his next login
  // catches up, before he opens it. He logs in with the keyboard alone.
  // Meanwhile alice sees when her contact was last online, and then online again.
  await conversation(alice, "bob").click();
  await alice.locator("#conv-presence").filter({ hasText: /^last seen / }).waitFor();
  await send(alice, "while you were out");
  await tick(alice, "while you were out", "sent").waitFor();
  await bob.keyboard.type("bob");
  await bob.keyboard.press("Tab");
  await bob.keyboard.type("pbob");
  await bob.keyboard.press("Enter");
  await conversation(bob, "alice, 1 unread, last from alice: while you were out").waitFor();
  await tick(alice, "while you were out", "delivered").waitFor();
  await alice.locator("#conv-presence").filter({ hasText: /^online$/ }).waitFor();
  ok("waiting messages delivered at login");
  ok("last seen, then online again");

  noProblems("during the run");
  ok("no console errors");
} catch (e) {
  // What each page showed, to tell a broken page from a slow cluster.
  for (const context of browser.contexts()) {
    for (const page of context.pages()) {
      const text = await page.locator("body").innerText().catch((err) => String(err));
      console.error(`---- ${page.url()} showed:\n${text.slice(0, 3000)}`);
    }
  }
  console.error(problems.join("\n"));
  throw e;
} finally {
  await browser.close();
  // An open stdin would keep this process alive.
  harnessLines.close();
  process.stdin.destroy();
}

/** Files between alice (node 0) and bob (node 1), in their private conversation. The
 * nodes take files up to 1 MiB and 600 KiB of new files per user (tests/tests/web.rs). */
async function files(alice, bob) {
  await conversation(alice, "bob").click();
  await conversation(bob, "alice").click();
  // What the upload list showed, however briefly.
  await alice.evaluate(() => {
    window.__uploads = [];
    const el = document.getElementById("uploads");
    new MutationObserver(() => window.__uploads.push(el.textContent)).observe(el, { childList: true, subtree: true, attributes: true });
  });

  // An image of 400x300 px, drawn in the page, picked with the attach button.
  const png = Buffer.from(await alice.evaluate(async () => {
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = [400, 300];
    const g = canvas.getContext("2d");
    const sky = g.createLinearGradient(0, 0, 0, 300);
    sky.addColorStop(0, "#1a5fc8");
    sky.addColorStop(1, "#f0a400");
    g.fillStyle = sky;
    g.fillRect(0, 0, 400, 300);
    g.fillStyle = "#fff";
    g.beginPath();
    g.arc(200, 220, 60, 0, Math.PI * 2);
    g.fill();
    const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
    return [...new Uint8Array(await blob.arrayBuffer())];
  }));
  const chooser = alice.waitForEvent("filechooser");
  await button(alice, "Attach files").click();
  await (await chooser).setFiles({ name: "sunset.png", mimeType: "image/png", buffer: png });
  const preview = (page) => log(page).getByRole("button", { name: /^Open image sunset\.png, \d/ }).locator("img");
  const shown = (img) => img.evaluate((el) => ({ src: el.src.slice(0, 5), complete: el.complete, width: el.naturalWidth, height: el.naturalHeight }));
  // The preview is the server's (at most 320 px), not the original, on both sides.
  for (const page of [bob, alice]) {
    await until("the image's preview", async () => {
      const img = await shown(preview(page));
      return (img.src === "blob:" && img.complete && img.width === 320 && img.height === 240) || JSON.stringify(img);
    });
  }
  await preview(bob).click();
  const viewer = bob.getByRole("dialog", { name: "Image" });
  await until("the whole image", async () => {
    const img = await shown(viewer.locator("img"));
    return (img.complete && img.width === 400 && img.height === 300) || JSON.stringify(img);
  });
  await viewer.getByText("sunset.png · 400×300").waitFor();
  await viewer.getByRole("link", { name: "Download" }).waitFor();
  await button(bob, "Close").click();
  await viewer.waitFor({ state: "hidden" });

  // A text file of several chunks (each at most about 64 KiB), dropped onto the
  // conversation; bob's link says its name and size and saves it, byte for byte.
  const notes = Array.from({ length: 150000 }, (_, i) => String.fromCharCode(97 + ((i * 7) % 26))).join("");
  const dropped = await alice.evaluateHandle((text) => {
    const dt = new DataTransfer();
    dt.items.add(new File([text], "notes.txt", { type: "text/plain" }));
    return dt;
  }, notes);
  await alice.locator("#conv").dispatchEvent("dragover", { dataTransfer: dropped });
  await alice.locator("#conv").dispatchEvent("drop", { dataTransfer: dropped });
  const link = log(bob).getByRole("link", { name: "Download notes.txt, 146 KB" });
  await link.filter({ hasText: "notes.txt" }).filter({ hasText: "146 KB" }).waitFor();
  const saving = bob.waitForEvent("download");
  await link.click();
  const saved = await saving;
  if (saved.suggestedFilename() !== "notes.txt") throw new Error(`saved as ${saved.suggestedFilename()}`);
  const got = await readFile(await saved.path(), "utf8");
  if (got !== notes) throw new Error(`the saved file differs: ${got.length} bytes, ${notes.length} sent`);
  await conversation(bob, "alice, last from alice: 📎 notes.txt").waitFor();
  const progress = await alice.evaluate(() => window.__uploads);
  if (!progress.some((t) => /notes\.txt\s*\d+%/.test(t))) throw new Error(`no upload progress shown: ${JSON.stringify(progress)}`);

  // Refused before any byte is sent: too large, then over the quota of new files.
  const pick = async (name, size) => {
    const chooser = alice.waitForEvent("filechooser");
    await button(alice, "Attach files").click();
    await (await chooser).setFiles({ name, mimeType: "application/octet-stream", buffer: Buffer.alloc(size, 7) });
  };
  await pick("big.bin", 1536 * 1024);
  await alice.getByRole("alert").filter({ hasText: "Not sent: big.bin is too large (1.5 MB): this server takes files of at most 1.0 MB." }).waitFor();
  await pick("half.bin", 500 * 1024);
  await alice.getByRole("alert").filter({ hasText: "Not sent: half.bin (500 KB) would take you over your quota of new files (600 KB)" }).waitFor();
  if (await log(bob).getByRole("link", { name: /^Download (big|half)\.bin/ }).count()) throw new Error("a refused file was sent");
  await alice.getByRole("list", { name: "Uploads" }).waitFor({ state: "hidden" });
  noProblems("with files");
}

async function hiddenBeforeLogin(page) {
  await page.getByRole("button", { name: "Log in", exact: true }).waitFor();
  await status(page).waitFor();
  if (await nav(page).isVisible()) throw new Error("the conversation list shows before login");
  if (await messageBox(page).isVisible()) throw new Error("the composer shows before login");
}

