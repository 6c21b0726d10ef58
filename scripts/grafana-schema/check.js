// Validates Grafana dashboards against Grafana's published schema, offline.
//
//   npm ci && node check.js ../../dashboards/*.json
//
// @grafana/schema (pinned in package.json) publishes the dashboard model and
// each panel plugin's options as TypeScript types generated from Grafana's
// CUE kinds. They are turned into JSON Schema here (ts-json-schema-generator)
// and every dashboard is checked with ajv: unknown keys, wrong types and
// values outside an enum fail, for the dashboard, its variables,
// annotations, panels, each panel type's options and custom field config,
// and each Prometheus query. Not checked: panel positions, PromQL (Prometheus
// itself checks that, scripts/check-monitoring.sh).
//
// The generated types are stricter than Grafana in a few places, each
// relaxed below with the reason: Grafana fills defaults on load, so keys the
// CUE marks as defaulted may be absent.
'use strict';
const fs = require('fs');
const path = require('path');
const Ajv = require('ajv');
const { createGenerator } = require('ts-json-schema-generator');

const RAW = path.join(path.dirname(require.resolve('@grafana/schema/package.json')), 'dist/esm/raw');

// Panel type -> the folder of its types under raw/composable/<folder>/panelcfg/x.
const PANEL_TYPES = {
  timeseries: 'timeseries',
  stat: 'stat',
  table: 'table',
  bargauge: 'bargauge',
  gauge: 'gauge',
  piechart: 'piechart',
  text: 'text',
  nodeGraph: 'nodegraph',
  'state-timeline': 'statetimeline',
  'status-history': 'statushistory',
  heatmap: 'heatmap',
  histogram: 'histogram',
  barchart: 'barchart',
  logs: 'logs',
};

function typesFile(dir) {
  const folder = path.join(RAW, dir);
  const file = fs.readdirSync(folder).find((f) => f.endsWith('.d.ts'));
  if (!file) throw new Error(`no types in ${folder}`);
  return path.join(folder, file);
}

function schemaOf(file, type, id) {
  const schema = createGenerator({
    path: file,
    type,
    tsconfig: path.join(__dirname, 'tsconfig.json'),
    skipTypeCheck: true,
    additionalProperties: false,
    expose: 'export',
    topRef: true,
  }).createSchema(type);
  schema.$id = id;
  return schema;
}

// Keys defaulted in the CUE are required in the generated types; Grafana
// merges the defaults when it loads a dashboard.
function withoutRequired(schema) {
  if (schema && typeof schema === 'object') {
    delete schema.required;
    Object.values(schema).forEach(withoutRequired);
  }
  return schema;
}

const ajv = new Ajv({ allErrors: true, strict: false });
const dashboard = schemaOf(typesFile('dashboard/x'), 'Dashboard', 'dashboard.json');
const defs = dashboard.definitions;
// Grafana writes a query variable's `definition` (its query as text) and an
// empty `current` until the variable is first resolved.
defs.VariableModel.properties.definition = { type: 'string' };
defs.VariableModel.properties.current = {
  anyOf: [{ $ref: '#/definitions/VariableOption' }, { type: 'object', maxProperties: 0 }],
};
// A data source's annotation query keeps its own keys (Prometheus: expr,
// step, titleFormat, textFormat, tagKeys) on the annotation.
defs.AnnotationQuery.additionalProperties = true;

const perType = [];
for (const [type, dir] of Object.entries(PANEL_TYPES)) {
  const file = typesFile(`composable/${dir}/panelcfg/x`);
  const source = fs.readFileSync(file, 'utf8');
  const then = { properties: {} };
  if (/export interface Options\b/.test(source)) {
    const options = withoutRequired(schemaOf(file, 'Options', `${dir}-options.json`));
    // The table editor saves an unset footer field list as "".
    const footer = options.definitions.Options.properties.footer;
    if (footer && footer.properties) {
      footer.properties.fields = { anyOf: [footer.properties.fields, { const: '' }] };
    }
    ajv.addSchema(options);
    then.properties.options = { $ref: options.$id };
  }
  if (/export interface FieldConfig\b/.test(source)) {
    const custom = withoutRequired(schemaOf(file, 'FieldConfig', `${dir}-fieldconfig.json`));
    ajv.addSchema(custom);
    then.properties.fieldConfig = {
      properties: { defaults: { properties: { custom: { $ref: custom.$id } } } },
    };
  }
  perType.push({ if: { properties: { type: { const: type } }, required: ['type'] }, then });
}
const prometheus = withoutRequired(
  schemaOf(typesFile('composable/prometheus/dataquery/x'), 'PrometheusDataQuery', 'prometheus-query.json'),
);
ajv.addSchema(prometheus);
perType.push({
  properties: {
    targets: {
      items: {
        if: {
          properties: { datasource: { properties: { type: { const: 'prometheus' } }, required: ['type'] } },
          required: ['datasource'],
        },
        then: { $ref: prometheus.$id },
      },
    },
  },
});
const knownType = { properties: { type: { enum: Object.keys(PANEL_TYPES) } } };
defs.PanelOfKnownType = { allOf: [{ $ref: '#/definitions/Panel' }, knownType, ...perType] };
// Rows and panels told apart by type, so that an error is reported once.
defs.Dashboard.properties.panels.items = {
  if: { properties: { type: { const: 'row' } }, required: ['type'] },
  then: { $ref: '#/definitions/RowPanel' },
  else: { $ref: '#/definitions/PanelOfKnownType' },
};
defs.RowPanel.properties.panels.items = { $ref: '#/definitions/PanelOfKnownType' };
const validate = ajv.compile(dashboard);

let failed = 0;
for (const file of process.argv.slice(2)) {
  if (validate(JSON.parse(fs.readFileSync(file, 'utf8')))) {
    console.log(`ok: ${path.basename(file)} matches Grafana's dashboard schema`);
    continue;
  }
  failed++;
  const errors = validate.errors.filter((e) => e.keyword !== 'if' && e.keyword !== 'allOf');
  console.error(`FAIL: ${file}: ${errors.length} errors`);
  for (const e of errors) console.error(`  ${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`);
}
process.exit(failed ? 1 : 0);
