// validate.mjs <openapi.json>: validates an OpenAPI document with @apidevtools/swagger-parser (structure against the
// official OpenAPI 3.1 schema, every $ref resolved). Exit 0 = valid; 1 = invalid (the reason on stderr).
// BERTH_NPM_DIR names the directory scripts/install-npm-tools installed into (its node_modules holds the validator).
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.resolve(process.env.BERTH_NPM_DIR ?? ".", "package.json"));
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
