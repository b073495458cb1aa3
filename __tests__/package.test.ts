// The published package: what `npm pack` would ship, and the package.json fields consumers rely on.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { ROOT, ensureDist } from './helpers/build';

interface PackageJson {
  main?: string;
  types?: string;
  exports?: Record<string, unknown>;
  typesVersions?: Record<string, Record<string, string[]>>;
  files?: string[];
  engines?: { node?: string };
  sideEffects?: boolean;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as PackageJson;
let files: string[] = [];
const normalise = (p: string) => p.replace(/^\.\//, '');
const SUBPATHS = ['redis', 'relay', 'metrics', 'admin', 'logging'];

beforeAll(() => {
  ensureDist();
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const report = JSON.parse(out) as Array<{ files: Array<{ path: string }> }>;
  files = report[0].files.map((f) => f.path).sort();
}, 120_000);

describe('npm pack contents', () => {
  test('ships the entry points, their types, README, LICENSE and package.json', () => {
    expect(files).toEqual(expect.arrayContaining(['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/types.d.ts']));
  });

  test('ships nothing from the development tree', () => {
    const forbidden = files.filter((f) =>
      /^(__tests__|lib|\.tmp|node_modules|examples|bench|coverage|\.ci|\.git)\//.test(f)
      || /^(tsconfig.*\.json|jest\.config\.js|package-lock\.json|\.gitignore)$/.test(f)
      || (f.endsWith('.ts') && !f.endsWith('.d.ts')));
    expect(forbidden).toEqual([]);
  });

  test('every compiled file has a source in lib/ (no stale build output)', () => {
    const stale = files
      .filter((f) => f.startsWith('dist/') && f.endsWith('.js'))
      .filter((f) => {
        try {
          readFileSync(path.join(ROOT, 'lib', f.slice('dist/'.length).replace(/\.js$/, '.ts')));
          return false;
        } catch {
          return true;
        }
      });
    expect(stale).toEqual([]);
  });

  test('source maps, when shipped, point only at shipped files', () => {
    const dangling: string[] = [];
    for (const f of files.filter((x) => x.endsWith('.map'))) {
      const map = JSON.parse(readFileSync(path.join(ROOT, f), 'utf8')) as { sources: string[] };
      for (const s of map.sources) {
        const target = path.posix.normalize(path.posix.join(path.posix.dirname(f), s));
        if (!files.includes(target)) dangling.push(`${f} -> ${target}`);
      }
    }
    expect(dangling.slice(0, 3)).toEqual([]);
  });
});

describe('package.json', () => {
  test('main, types and every exports entry (types condition first) point at shipped files', () => {
    expect(files).toContain(normalise(pkg.main ?? ''));
    expect(files).toContain(normalise(pkg.types ?? ''));
    expect(Object.keys(pkg.exports ?? {}).sort()).toEqual(['.', './package.json', ...SUBPATHS.map((s) => `./${s}`)].sort());
    for (const entry of ['.', ...SUBPATHS.map((s) => `./${s}`)]) {
      const target = pkg.exports?.[entry] as Record<string, string> | undefined;
      expect({ entry, first: target && Object.keys(target)[0] }).toEqual({ entry, first: 'types' });
      for (const file of Object.values(target ?? {})) expect(files).toContain(normalise(file));
    }
    expect(pkg.exports?.['./package.json']).toBe('./package.json');
  });

  test('typesVersions maps every subpath for TypeScript setups that do not read exports', () => {
    for (const s of SUBPATHS) {
      const [decl] = pkg.typesVersions?.['*']?.[s] ?? [];
      expect({ s, decl }).toEqual({ s, decl: `dist/entry/${s}.d.ts` });
      expect(files).toContain(decl);
    }
  });

  test('engines, sideEffects and files', () => {
    expect(pkg.engines?.node).toBe('>=20');
    expect(pkg.sideEffects).toBe(false);
    expect(pkg.files).toEqual(expect.arrayContaining(['dist']));
  });

  test('express is a required peer; redis and prom-client are optional peers, never dependencies', () => {
    expect(pkg.peerDependencies?.express).toMatch(/\^4\..*\|\|.*\^5\./);
    expect(pkg.peerDependenciesMeta?.express?.optional).not.toBe(true);
    for (const name of ['redis', 'prom-client']) {
      expect(pkg.peerDependencies?.[name]).toBeDefined();
      expect(pkg.peerDependenciesMeta?.[name]?.optional).toBe(true);
      expect(pkg.dependencies?.[name]).toBeUndefined();
    }
    expect(pkg.dependencies?.express).toBeUndefined();
  });

  test('loading the built entries loads neither optional peer (metrics loads prom-client only when called)', () => {
    const script = `
      const path = require('node:path');
      const peers = () => Object.keys(require.cache).filter((k) => /node_modules[\\\\/](prom-client|redis|@redis)[\\\\/]/.test(k));
      const out = {};
      for (const e of ['index', 'entry/redis', 'entry/relay', 'entry/metrics', 'entry/admin', 'entry/logging']) {
        const m = require(path.join(${JSON.stringify(path.join(ROOT, 'dist'))}, e + '.js'));
        out[e] = { names: Object.keys(m).sort(), peers: peers() };
      }
      process.stdout.write(JSON.stringify(out));
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: ROOT, encoding: 'utf8' })) as Record<string, { names: string[]; peers: string[] }>;
    for (const e of Object.keys(out)) expect({ e, peers: out[e].peers }).toEqual({ e, peers: [] });
    expect(out.index.names).toEqual(expect.arrayContaining(['distributor', 'default', 'ChannelRegistry', 'ChannelStatus', 'MemoryStore', 'DistributorError', 'defaultAffinityRules', 'affinityFromNewApi', 'channelsFromNewApi']));
    for (const moved of ['RedisStore', 'relay', 'distributorMetrics', 'distributorAdmin', 'adminRouter', 'VALIDATION_CODES', 'redactFormat']) expect(out.index.names).not.toContain(moved);
    expect(out['entry/redis'].names).toEqual(['RedisStore', 'RedisStoreUnavailableError']);
    expect(out['entry/relay'].names).toEqual(['DEFAULT_RETRY_STATUS', 'isRetryable', 'parseStatusRanges', 'relay']);
    expect(out['entry/metrics'].names).toEqual(['distributorMetrics', 'mergeHooks']);
    expect(out['entry/admin'].names).toEqual(['adminRouter', 'channelFromNewApi', 'distributorAdmin', 'normalizeModelName']);
    expect(out['entry/logging'].names).toEqual(['VALIDATION_CODES', 'createDefaultLogger', 'redactFormat', 'redactText']);
  });

  // 40 in the 0.2 restructure; 0.2's adaptive routing and native upstreams added 9 public types
  // (ChannelType, ChannelLimits, SelectionOptions, SelectionStrategy, UsageReport,
  // NewApiImportOptions, and the store's HealthMark, SlotRequest, SlotReply for custom stores).
  // A new name must be worth its place.
  test('the main entry exports at most 49 names (values and types, the default export included)', () => {
    const file = path.join(ROOT, 'dist', 'index.d.ts');
    const program = ts.createProgram([file], { strict: true, noEmit: true, types: ['node'] });
    const checker = program.getTypeChecker();
    const symbol = checker.getSymbolAtLocation(program.getSourceFile(file) as ts.SourceFile);
    const names = checker.getExportsOfModule(symbol as ts.Symbol).map((x) => x.getName()).sort();
    expect(names).toContain('default');
    expect(names).toContain('Distribution');
    expect(names.length).toBeLessThanOrEqual(49);
  });
});

describe('installed from the packed tarball', () => {
  const dir = path.join(ROOT, '.tmp', `pack-${process.pid}`);
  const modules = path.join(dir, 'node_modules');
  beforeAll(() => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(path.join(modules, 'express-channel-distributor'), { recursive: true });
    const out = execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const tarball = path.join(dir, (JSON.parse(out) as Array<{ filename: string }>)[0].filename);
    execFileSync('tar', ['-xzf', tarball, '-C', path.join(modules, 'express-channel-distributor'), '--strip-components=1']);
    // the consumer's own dependencies: the repository's node_modules, linked (never our package)
    for (const name of readdirSync(path.join(ROOT, 'node_modules'))) {
      if (name === 'express-channel-distributor' || name === '.bin') continue;
      symlinkSync(path.join(ROOT, 'node_modules', name), path.join(modules, name));
    }
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('every entry resolves by name through exports and loads', () => {
    const script = `
      const out = {};
      for (const e of ['', '/redis', '/relay', '/metrics', '/admin', '/logging']) out[e || '.'] = Object.keys(require('express-channel-distributor' + e)).length;
      out.internal = (() => { try { require('express-channel-distributor/dist/run/request-run'); return 'reachable'; } catch (e) { return e.code; } })();
      process.stdout.write(JSON.stringify(out));
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: dir, encoding: 'utf8' })) as Record<string, number | string>;
    for (const e of ['.', '/redis', '/relay', '/metrics', '/admin', '/logging']) expect({ e, n: (out[e] as number) > 0 }).toEqual({ e, n: true });
    expect(out.internal).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED'); // internals are not part of the API
  });

  test.each([
    ['node16 (exports)', ts.ModuleResolutionKind.Node16, ts.ModuleKind.Node16],
    ['node10 (typesVersions)', ts.ModuleResolutionKind.Node10, ts.ModuleKind.CommonJS],
  ])('a strict consumer type-checks every entry under %s resolution', (_label, moduleResolution, module) => {
    const file = path.join(dir, `consumer-${moduleResolution}.ts`);
    writeFileSync(file, [
      "import express from 'express';",
      "import { distributor, MemoryStore, type Distribution } from 'express-channel-distributor';",
      "import { RedisStore } from 'express-channel-distributor/redis';",
      "import { relay, isRetryable } from 'express-channel-distributor/relay';",
      "import { mergeHooks } from 'express-channel-distributor/metrics';",
      "import { distributorAdmin } from 'express-channel-distributor/admin';",
      "import { redactFormat } from 'express-channel-distributor/logging';",
      'const app = express();',
      "const mw = distributor({ channels: [{ id: 1, models: 'm' }], store: new MemoryStore(), on: mergeHooks({}) });",
      "app.use(mw, relay({ forwardHeaders: ['x-a'] }));",
      'const s = new RedisStore({ sendCommand: async () => null });',
      "app.use((_req, res) => { const d: Distribution | undefined = res.locals.distribution; res.json({ d, k: res.locals.channel?.key }); });",
      'void [s, isRetryable, distributorAdmin(mw), redactFormat];',
      '',
    ].join('\n'));
    const program = ts.createProgram([file], { strict: true, noEmit: true, skipLibCheck: false, esModuleInterop: true, types: ['node'], target: ts.ScriptTarget.ES2022, module, moduleResolution, typeRoots: [path.join(modules, '@types')] });
    const diags = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    expect(diags).toEqual([]);
  }, 120_000);
});
