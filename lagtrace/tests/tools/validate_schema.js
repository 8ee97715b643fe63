// Validate a JSON file against a JSON schema (draft-07) with ajv.
// Usage: NODE_PATH=target/npm/node_modules node validate_schema.js SCHEMA FILE
// Prints "valid" and exits 0, or prints the errors and exits 1.
const fs = require("fs");
const Ajv = require("ajv");
const [schemaPath, filePath] = process.argv.slice(2);
const schema = JSON.parse(fs.readFileSync(schemaPath, "utf8"));
const doc = JSON.parse(fs.readFileSync(filePath, "utf8"));
const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile(schema);
if (validate(doc)) {
  console.log("valid");
} else {
  console.log(JSON.stringify(validate.errors.slice(0, 10), null, 1));
  process.exit(1);
}
