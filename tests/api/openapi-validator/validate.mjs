// validate.mjs <openapi.json>: validates an OpenAPI document with @apidevtools/swagger-parser (structure against the
// official OpenAPI 3.1 schema, every $ref resolved). Exit 0 = valid; 1 = invalid (the reason on stderr).
// Run with NODE_PATH pointing at the node_modules that scripts/install-npm-tools filled.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.BERTH_NPM_DIR ?? ".", "node_modules", "x.js"));
const SwaggerParser = require("@apidevtools/swagger-parser");

const file = process.argv[2];
try {
  const api = await SwaggerParser.validate(file);
  const ops = Object.values(api.paths).reduce((n, item) => n + Object.keys(item).length, 0);
  console.log(`${file}: valid OpenAPI ${api.openapi} (${Object.keys(api.paths).length} paths, ${ops} operations)`);
} catch (err) {
  console.error(`${file}: INVALID: ${err.message}`);
  process.exit(1);
}
