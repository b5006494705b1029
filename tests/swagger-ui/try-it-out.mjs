// Swagger UI as a person uses it: for each operation named on the command line (METHOD /path, in that order), open it,
// click "Try it out" and "Execute" with what Swagger UI pre-fills, and print the status it shows, one JSON object a line.
// Usage: node try-it-out.mjs http://127.0.0.1:8080 "POST /reset" "GET /a" ...
import { chromium } from 'playwright-core';

const [base, ...operations] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(`${base}/swagger/index.html`);
  await page.waitForSelector('.opblock', { timeout: 30000 });
  for (const operation of operations) {
    const [method, path] = operation.split(' ');
    const block = page.locator(`.opblock-${method.toLowerCase()}`).filter({
      has: page.locator(`.opblock-summary-path[data-path="${path}"]`),
    }).first();
    await block.locator('.opblock-summary').first().click();
    await block.locator('.try-out__btn').click();
    await block.locator(".execute").click();
    const status = block.locator(".live-responses-table tbody .response-col_status").first();
    await status.waitFor({ timeout: 30000 });
    const body = await block.locator('.live-responses-table .response-col_description pre').first().textContent().catch(() => '');
    console.log(JSON.stringify({ operation, status: (await status.textContent()).trim(), body: (body ?? '').slice(0, 300) }));
  }
} finally {
  await browser.close();
}
