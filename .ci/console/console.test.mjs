// The web console, end to end in Debian's Chromium (driven by playwright-core), on a demo
// federation this file starts and stops. Run by .ci/run:
//   CONCORD_BIN=target/debug/concord node --test --test-concurrency=1 .ci/console/console.test.mjs
// Screenshots of every page go to target/console-screenshots/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const concord = resolve(root, process.env.CONCORD_BIN ?? "target/debug/concord");
const shots = join(root, "target", "console-screenshots");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PORT_BASE = "7890";

let demo, work, members, browser;

async function waitFor(path, proc, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (!existsSync(path)) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      throw new Error(`the demo did not start:\n${readFileSync(join(work, "demo.log"), "utf8")}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  await new Promise((r) => setTimeout(r, 500));
}

before(async () => {
  mkdirSync(shots, { recursive: true });
  work = mkdtempSync(join(tmpdir(), "concord-console-"));
  const { openSync } = await import("node:fs");
  const log = openSync(join(work, "demo.log"), "w");
  demo = spawn(concord, ["demo", "--dir", join(work, "demo"), "--port-base", PORT_BASE], {
    stdio: ["ignore", log, log],
    env: { ...process.env, NO_COLOR: "1" },
  });
  await waitFor(join(work, "demo", "demo.json"), demo, 300);
  const file = JSON.parse(readFileSync(join(work, "demo", "demo.json"), "utf8"));
  members = Object.fromEntries(file.members.map((m) => [m.id, m]));
  browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    const exited = new Promise((r) => demo.once("exit", r));
    demo.kill("SIGINT");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 30000))]);
    if (demo.exitCode === null) demo.kill("SIGKILL");
  }
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A page logged in to `member`'s console with the token of `role`, in `shared` or a fresh context. */
async function login(member, role, shared) {
  const context = shared ?? (await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true }));
  const page = await context.newPage();
  page.on("dialog", () => assert.fail("a dialog opened: a script ran on a console page"));
  await page.goto(`${members[member].local_url}/console`);
  assert.match(page.url(), /\/console\/login$/, "without a session the console asks to log in");
  await page.fill("#token", members[member][`${role}_token`]);
  await page.click("button[type=submit]");
  await page.waitForURL(/\/console$/);
  assert.match(await page.textContent("header .who"), new RegExp(`${member} · demo · ${role}`));
  return { context, page };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

test("the overview shows every member's health, the charter version and the log's cosigners", async () => {
  const { context, page } = await login("alpha", "analyst");
  const rows = page.locator("table").first().locator("tbody tr");
  assert.equal(await rows.count(), 3);
  for (const id of ["bravo", "charlie"]) {
    const row = rows.filter({ hasText: id });
    assert.match(await row.textContent(), /answers \(\d+ ms\)/);
  }
  assert.match(await page.textContent("main"), /charter version 1/);
  assert.match(await page.textContent("main"), /Last published checkpoint: \d+ entries/);
  assert.match(await page.textContent("main"), /demo\/(bravo|charlie)\/witness/);
  const csp = (await page.request.get(page.url())).headers()["content-security-policy"];
  assert.match(csp, /default-src 'none'/);
  await shot(page, "overview");
  await context.close();
});

test("an analyst runs a federated query and sees its table, chart, provenance and CSV", async () => {
  const { context, page } = await login("alpha", "analyst");
  await page.click("nav >> text=Query");
  const sql = "SELECT region, count(*) AS cases, sum(hospital_days) AS days FROM health_cases GROUP BY region ORDER BY region";
  await page.fill("#sql", sql);
  await page.click("form.query button[type=submit]");
  await page.waitForSelector("section.result");
  const regions = await page.locator("table.result tbody tr td:first-child").allTextContents();
  assert.ok(regions.includes("AL-Capital") && regions.includes("BR-East") && regions.includes("CH-1"), regions.join());
  // The chart is an SVG image that the browser drew.
  const img = page.locator("figure.chart img");
  assert.equal(await img.getAttribute("alt"), "Bars of cases by region");
  await img.evaluate((el) => (el.complete ? null : new Promise((r) => (el.onload = r))));
  assert.ok((await img.evaluate((el) => el.naturalWidth)) > 0, "the chart was drawn");
  // Provenance: every member contributed, with noise and budget under DP.
  const provenance = await page.locator("table.provenance").textContent();
  for (const id of ["alpha", "bravo", "charlie"]) assert.ok(provenance.includes(id), provenance);
  assert.match(provenance, /zcdp/);
  assert.match(provenance, /not told \(under differential privacy\)/);
  await shot(page, "query");
  // The CSV is the result shown, downloaded without running the query again.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("a.download")]);
  const csv = readFileSync(await download.path(), "utf8").split("\n");
  assert.equal(csv[0], "region,cases,days");
  assert.equal(csv.filter((l) => l.length > 0).length, regions.length + 1);
  await context.close();
});

test("a refusal is said in words and data on a page is never markup", async () => {
  const { context, page } = await login("alpha", "analyst");
  await page.goto(`${members.alpha.local_url}/console/query`);
  await page.fill("#sql", "SELECT case_id FROM bravo.health_cases");
  await page.click("form.query button[type=submit]");
  const refusal = page.locator(".refusal");
  await refusal.waitFor();
  assert.match(await refusal.textContent(), /policy|refus/i);
  assert.match(await refusal.textContent(), /health_cases holds personal data.*never as rows/);
  await shot(page, "query-refused");
  // A value that is HTML shows as text: no element is made from it, no script runs.
  await page.fill("#sql", "SELECT '<img src=x onerror=alert(1)><b id=injected>bold</b>' AS label, 1 AS n");
  await page.click("form.query button[type=submit]");
  await page.waitForSelector("section.result");
  assert.equal(await page.locator("#injected").count(), 0);
  assert.match(await page.locator("table.result").textContent(), /<b id=injected>bold<\/b>/);
  await context.close();
});

test("an access request filed by alpha's analyst is approved by bravo's steward", async () => {
  const purpose = "console study of hospital stays";
  const analyst = await login("alpha", "analyst");
  await analyst.page.click("nav >> text=Access requests");
  await analyst.page.fill("#dataset", "bravo.health_cases");
  await analyst.page.fill("#purpose", purpose);
  await analyst.page.fill("#legal_basis", "public health act, art. 12");
  await analyst.page.fill("#days", "30");
  await analyst.page.click("form.stack button[type=submit]");
  assert.match(await analyst.page.textContent(".notice"), /filed with bravo: pending/);

  // In the same browser: each node's console keeps its own session on one host.
  const steward = await login("bravo", "steward", analyst.context);
  await steward.page.click("nav >> text=Access requests");
  const card = steward.page.locator("article.request", { hasText: purpose });
  assert.equal(await card.count(), 1, "the request waits in bravo's inbox");
  assert.match(await card.textContent(), /alpha asks for aggregate on/);
  await shot(steward.page, "access-inbox");
  await card.locator("button", { hasText: "Approve" }).click();
  assert.match(await steward.page.textContent(".notice"), /from alpha: approved/);

  // The decision reaches the requester's node.
  let status = "";
  for (let i = 0; i < 40 && status !== "approved"; i++) {
    await analyst.page.goto(`${members.alpha.local_url}/console/access`);
    const row = analyst.page.locator("tbody tr", { hasText: purpose });
    status = (await row.count()) ? (await row.locator("td").nth(7).textContent()).trim() : "";
    if (status !== "approved") await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(status, "approved");
  assert.match(await analyst.page.textContent("header .who"), /alpha · demo · analyst/, "alpha's session lived on");

  // A second request, refused with a reason that reaches the analyst.
  const other = "console request to be refused";
  await analyst.page.fill("#dataset", "bravo.health_cases");
  await analyst.page.fill("#purpose", other);
  await analyst.page.fill("#legal_basis", "none given");
  await analyst.page.click("form.stack button[type=submit]");
  await steward.page.goto(`${members.bravo.local_url}/console/access`);
  const refuse = steward.page.locator("article.request", { hasText: other });
  await refuse.locator("input[name=reason]").fill("no legal basis <given>");
  await refuse.locator("button", { hasText: "Refuse" }).click();
  assert.match(await steward.page.textContent(".notice"), /from alpha: refused/);
  let reason = "";
  for (let i = 0; i < 40 && !reason.includes("no legal basis"); i++) {
    await analyst.page.goto(`${members.alpha.local_url}/console/access`);
    const row = analyst.page.locator("tbody tr", { hasText: other });
    reason = (await row.count()) ? await row.textContent() : "";
    if (!reason.includes("no legal basis")) await new Promise((r) => setTimeout(r, 250));
  }
  assert.match(reason, /refused/);
  assert.match(reason, /no legal basis <given>/, "the reason, as text");
  await shot(analyst.page, "access");
  await analyst.context.close();
});

test("a steward reads datasets and policies in words, and the budgets with a chart", async () => {
  const { context, page } = await login("bravo", "steward");
  await page.click("nav >> text=Datasets");
  const text = await page.textContent("main");
  assert.match(text, /health_cases/);
  assert.match(text, /Column case_id is hidden\./);
  assert.match(text, /one query costs rho = 0\.005/);
  assert.ok(!text.includes("[release"), "no TOML on the page");
  const budgets = page.locator("h2:has-text('Privacy budgets') + figure img");
  await budgets.evaluate((el) => (el.complete ? null : new Promise((r) => (el.onload = r))));
  assert.ok((await budgets.evaluate((el) => el.naturalWidth)) > 0, "the budget chart was drawn");
  assert.match(await page.locator("table").last().textContent(), /alpha/);
  await shot(page, "datasets");
  await context.close();
});

test("an auditor runs an audit of every member and sees reconciliation and fork evidence", async () => {
  const { context, page } = await login("charlie", "auditor");
  await page.click("nav >> text=Audit");
  await page.click("form.inline button[type=submit]");
  await page.waitForSelector("h2:has-text('Reconciliation')", { timeout: 120000 });
  const text = await page.textContent("main");
  assert.match(text, /The audit found nothing wrong\./);
  assert.match(text, /No log showed two different trees\./);
  for (const id of ["alpha", "bravo", "charlie"]) assert.ok(text.includes(id));
  await shot(page, "audit");
  await context.close();
});

test("delegates vote on a proposal until it is adopted, and the history shows the change", async () => {
  const alpha = await login("alpha", "delegate");
  await alpha.page.click("nav >> text=Governance");
  await alpha.page.fill("#changes", '[{"change": "min-group-size", "size": 12}]');
  await alpha.page.click("form.stack button[type=submit]");
  assert.match(await alpha.page.textContent(".notice"), /filed; this member voted yes/);
  const proposal = alpha.page.locator("article.proposal", { hasText: "minimum group size 12" });
  assert.match(await proposal.textContent(), /Yes: 1 of 2 needed/);

  // bravo's node learns of the proposal from alpha's; its delegate votes yes.
  const bravo = await login("bravo", "delegate");
  let card;
  for (let i = 0; i < 60; i++) {
    await bravo.page.goto(`${members.bravo.local_url}/console/governance`);
    card = bravo.page.locator("article.proposal", { hasText: "minimum group size 12" });
    if (await card.count()) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(await card.count(), 1, "the proposal reached bravo");
  await shot(bravo.page, "governance");
  await card.locator("input[name=reason]").fill("larger groups protect people better");
  await card.locator("button", { hasText: "Vote yes" }).click();
  assert.match(await bravo.page.textContent(".notice"), /adopted \(charter version 2\)/);
  const history = bravo.page.locator("article.version").first();
  assert.match(await history.textContent(), /Version 2/);
  assert.match(await history.textContent(), /minimum group size 12/);
  await alpha.context.close();
  await bravo.context.close();
});

test("a wrong token, a form without its CSRF token and a form from elsewhere are refused", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${members.alpha.local_url}/console/login`);
  await page.fill("#token", "concord_" + "0".repeat(64));
  const [resp] = await Promise.all([page.waitForResponse((r) => r.request().method() === "POST"), page.click("button[type=submit]")]);
  assert.equal(resp.status(), 401);
  assert.match(await page.textContent(".refusal"), /Unknown token/);
  await context.close();

  const { context: ctx, page: p } = await login("alpha", "analyst");
  const cookie = (await ctx.cookies()).find((c) => c.name === "concord_session_alpha");
  assert.ok(cookie.httpOnly && cookie.sameSite === "Strict" && cookie.path === "/console");
  const url = `${members.alpha.local_url}/console/query`;
  const sql = "SELECT count(*) FROM health_cases";
  // No CSRF token: refused, and nothing runs.
  const forged = await p.request.post(url, { form: { sql, purpose: "analysis" } });
  assert.equal(forged.status(), 403);
  assert.match(await forged.text(), /CSRF check failed/);
  // The right CSRF token, sent from another origin: refused too.
  const csrf = await p.locator("form.logout input[name=csrf]").getAttribute("value");
  const elsewhere = await p.request.post(url, { form: { csrf, sql }, headers: { Origin: "http://evil.example" } });
  assert.equal(elsewhere.status(), 403);
  // The same form from this console runs.
  const mine = await p.request.post(url, { form: { csrf, sql, purpose: "analysis" }, headers: { Origin: members.alpha.local_url } });
  assert.equal(mine.status(), 200);
  // Logging out ends the session: the next page asks to log in again.
  await p.click("form.logout button");
  await p.waitForURL(/\/console\/login$/);
  await p.goto(`${members.alpha.local_url}/console/query`);
  assert.match(p.url(), /\/console\/login$/);
  await ctx.close();
});
