// Drives the dashboard in the system's headless Chromium with puppeteer-core, as a user
// would: paste the key, upload a bad file and then a good one, start a job, watch its
// curve and status, predict. Run by tests/e2e/ui.rs, which starts the server and checks
// the report this prints (one JSON object on stdout); a step that fails exits 1 with
// what the page showed.
//
// Environment: HONE_URL (the page's origin), HONE_API_KEY, UI_GOOD and UI_BAD (dataset
// files), UI_OUT (where screenshots go), HONE_CHROMIUM, UI_TEST_DEPS (the folder
// scripts/setup installed puppeteer-core into).

import { createRequire } from "node:module";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const origin = env("HONE_URL");
const out = env("UI_OUT");
const require = createRequire(join(env("UI_TEST_DEPS"), "package.json"));
const puppeteer = require("puppeteer-core");

const report = { steps: [], foreign_requests: [], console_errors: [], screenshots: [] };
const step = (name) => {
  report.steps.push({ name, at_ms: Math.round(performance.now()) });
  process.stderr.write(`ui: ${name}\n`);
};

const browser = await puppeteer.launch({
  executablePath: process.env.HONE_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", // the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--hide-scrollbars",
    // Only the server's host resolves: a page that needed a CDN could not work.
    `--host-resolver-rules=MAP ${new URL(origin).hostname} 127.0.0.1, MAP * ~NOTFOUND`,
  ],
  defaultViewport: { width: 1280, height: 900 },
});
const page = await browser.newPage();
page.setDefaultTimeout(30_000);
page.on("request", (r) => {
  const url = r.url();
  if (!url.startsWith(`${origin}/`) && !url.startsWith("data:")) report.foreign_requests.push(url);
});
page.on("console", (m) => {
  if (m.type() === "error") report.console_errors.push(m.text());
});
page.on("pageerror", (e) => report.console_errors.push(`uncaught: ${e.message}`));

const shot = async (name) => {
  const path = join(out, `ui-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  report.screenshots.push(path);
};
const text = (sel) => page.$eval(sel, (el) => el.textContent);

try {
  // `/` sends the browser to the dashboard, which asks for a key.
  await page.goto(`${origin}/`, { waitUntil: "load" });
  report.landed_on = page.url();
  await page.waitForSelector("#api-key");
  step("login form shown");
  await page.type("#api-key", "hone_sk_wrong_key_000000000000000000000000000000");
  await page.click("#login button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#login .error")?.textContent.length > 0);
  report.wrong_key_message = await text("#login .error");
  await page.$eval("#api-key", (el) => { el.value = ""; });
  await page.type("#api-key", env("HONE_API_KEY"));
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#new-job");
  report.key_in_session_storage = await page.evaluate(() => !!sessionStorage.getItem("hone.apiKey"));
  report.key_in_url = page.url().includes(env("HONE_API_KEY"));
  step("signed in");

  // Files: a good upload is listed; a rejected one shows the server's message and the
  // line at fault.
  await page.goto(`${origin}/ui#/files`);
  await page.waitForSelector("#upload-file");
  await (await page.$("#upload-file")).uploadFile(env("UI_GOOD"));
  await page.click("#upload button[type=submit]");
  await page.waitForSelector("#upload-ok");
  report.upload_ok = await text("#upload-ok");
  await page.waitForSelector("#files tr[data-file]");
  report.files_rows = await page.$$eval("#files tr[data-file]", (rows) => rows.length);
  step("good file uploaded");
  // The rejected file, the uploaded one still listed below.
  await (await page.$("#upload-file")).uploadFile(env("UI_BAD"));
  await page.click("#upload button[type=submit]");
  await page.waitForSelector("#upload-error .error-line");
  report.upload_error = await text("#upload-error");
  report.error_line = await page.$eval("#upload-error .error-line", (el) => ({
    line: el.dataset.line, text: el.textContent,
  }));
  step("bad file rejected at its line");
  await shot("files");

  // Jobs: start a job from the form; its page shows the curve and ends succeeded.
  await page.goto(`${origin}/ui#/jobs`);
  await page.waitForFunction(() => document.querySelector("#job-file")?.options.length > 0);
  await page.select("#job-model", "all-MiniLM-L6-v2");
  await page.select("#job-method", "feature_extraction");
  await page.$eval("#job-epochs", (el) => { el.value = "4"; });
  await page.click("#new-job button[type=submit]");
  await page.waitForFunction(() => /^#\/jobs\/ftjob-/.test(location.hash));
  report.job_id = (await page.evaluate(() => location.hash)).slice("#/jobs/".length);
  step("job created");
  await page.waitForSelector("#loss-chart .uplot canvas", { timeout: 180_000 });
  step("loss curve drawn");
  await page.waitForSelector("#job-head [data-status=succeeded]", { timeout: 180_000 });
  step("job succeeded");
  await page.waitForSelector("#confusion td");
  report.curve_points = await page.evaluate(() =>
    document.querySelectorAll("#loss-chart .u-legend").length);
  report.accuracy = await text("#accuracy");
  report.confusion_cells = await page.$$eval("#confusion td", (tds) => tds.map((t) => t.textContent));
  report.data_report = await text("#data-report");
  report.checkpoint_buttons = await page.$$eval("#checkpoints button[data-epoch]", (b) => b.length);
  report.events_shown = await page.$$eval("#events div", (d) => d.length);
  await shot("job");

  // Publish the first epoch's checkpoint: its row then names a model.
  await page.click("#checkpoints button[data-epoch='1']");
  await page.waitForFunction(() => !document.querySelector("#checkpoints button[data-epoch='1']")
    && document.querySelector("#checkpoints")?.textContent.includes(":ckpt-1"));
  step("checkpoint published");

  await page.goto(`${origin}/ui#/jobs`);
  await page.waitForSelector(`#jobs tr[data-job='${report.job_id}'] [data-status=succeeded]`);
  step("job listed as succeeded");
  await shot("jobs");

  // Models: predict with the job's model; each label gets a score bar.
  await page.goto(`${origin}/ui#/models`);
  await page.waitForFunction(() => document.querySelector("#predict-model")?.options.length > 0);
  const model = await page.$eval("#models tr[data-model] td", (td) => td.textContent);
  const jobModel = await page.evaluate(async (id) => {
    const r = await fetch(`/v1/fine_tuning/jobs/${id}`, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem("hone.apiKey")}` },
    });
    return (await r.json()).fine_tuned_model;
  }, report.job_id);
  report.model = jobModel || model;
  await page.select("#predict-model", report.model);
  await page.type("#predict-input", "loved it, a wonderful film\nan awful film, I hated it");
  await page.click("#predict button[type=submit]");
  await page.waitForSelector("#predictions .score-bar");
  report.predictions = await page.$$eval("#predictions .prediction", (ps) => ps.map((p) => ({
    input: p.querySelector("strong").textContent,
    top: p.querySelector(".score-bar.top")?.parentElement.previousElementSibling.textContent,
    bars: p.querySelectorAll(".score-bar").length,
  })));
  step("predicted");
  await shot("models");

  // Cancel: a long job (full fine-tuning, 100 epochs) is cancelled from its page.
  await page.goto(`${origin}/ui#/jobs`);
  await page.waitForFunction(() => document.querySelector("#job-file")?.options.length > 0);
  await page.select("#job-method", "full");
  await page.$eval("#job-epochs", (el) => { el.value = "100"; });
  await page.click("#new-job button[type=submit]");
  await page.waitForFunction((done) => /^#\/jobs\/ftjob-/.test(location.hash)
    && location.hash !== `#/jobs/${done}`, {}, report.job_id);
  await (await page.waitForSelector("#cancel")).click();
  await page.waitForSelector("#job-head [data-status=cancelled]", { timeout: 60_000 });
  report.cancelled = (await page.evaluate(() => location.hash)).slice("#/jobs/".length);
  step("job cancelled");
} catch (e) {
  report.failure = String(e?.stack || e);
  report.page_url = page.url();
  report.page_text = await page.evaluate(() => document.body.innerText).catch(() => null);
  await shot("failure").catch(() => {});
}
await browser.close();
process.stdout.write(JSON.stringify(report));
process.exit(report.failure ? 1 : 0);
