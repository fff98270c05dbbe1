// Validates Prometheus Operator objects against the operator's own schemas, offline: the
// ajv validators @kubernetes-models/prometheus-operator generates from the operator's CRDs.
//
// Usage: node validate.mjs [JSON ...]   (no argument: one JSON document on stdin)
// Each argument or the stdin document is an object or an array of objects. Prints one line
// per object and exits 0 when all are valid, 1 when any is invalid (the line names the
// field), 2 on bad input (not JSON, not an object, a kind this script does not know).
//
// Like the API server, these schemas do not refuse unknown fields (it prunes them): a
// misspelt field passes here, which tests/deploy/test_components.py checks for instead.
import { readFileSync } from "node:fs";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const MODELS = [PodMonitor, PrometheusRule, ServiceMonitor];

function usage(message) {
  console.error(`validate.mjs: ${message}`);
  process.exit(2);
}

function parse(text, where) {
  try {
    return JSON.parse(text);
  } catch (err) {
    return usage(`${where}: not JSON: ${err.message}`);
  }
}

const documents = process.argv.length > 2
  ? process.argv.slice(2).map((text, i) => parse(text, `argument ${i + 1}`))
  : [parse(readFileSync(0, "utf8"), "stdin")];
const objects = documents.flat();
if (objects.length === 0) usage("no object to validate");

let invalid = 0;
for (const obj of objects) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    usage(`not an object: ${JSON.stringify(obj)}`);
  }
  const what = `${obj.apiVersion}/${obj.kind} ${obj.metadata?.name ?? "(no name)"}`;
  const Model = MODELS.find((m) => m.apiVersion === obj.apiVersion && m.kind === obj.kind);
  if (Model === undefined) usage(`${what}: not a kind this script validates`);
  try {
    // The constructor fills in apiVersion and kind only where they are missing.
    new Model(obj).validate();
    console.log(`valid: ${what}`);
  } catch (err) {
    invalid += 1;
    console.log(`invalid: ${what}: ${err.message}`);
  }
}
process.exit(invalid ? 1 : 0);
