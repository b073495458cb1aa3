// The published package: what `npm pack` would ship, and the package.json fields consumers rely on.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, ensureDist } from './helpers/build';

interface PackageJson {
  main?: string;
  types?: string;
  exports?: Record<string, unknown>;
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
  test('main, types and exports (types condition first) point at shipped files', () => {
    expect(files).toContain(normalise(pkg.main ?? ''));
    expect(files).toContain(normalise(pkg.types ?? ''));
    const root = pkg.exports?.['.'] as Record<string, string> | undefined;
    expect(root && Object.keys(root)[0]).toBe('types');
    for (const target of Object.values(root ?? {})) expect(files).toContain(normalise(target));
    expect(pkg.exports?.['./package.json']).toBe('./package.json');
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

  test('loading the built entry loads neither optional peer', () => {
    const script = `
      const m = require(${JSON.stringify(path.join(ROOT, 'dist', 'index.js'))});
      const loaded = Object.keys(require.cache).filter((k) => /node_modules[\\\\/](prom-client|redis|@redis)[\\\\/]/.test(k));
      process.stdout.write(JSON.stringify({ exports: ['distributor', 'default', 'distributorMetrics', 'distributorAdmin', 'adminRouter', 'VALIDATION_CODES'].filter((k) => !(k in m)), loaded }));
    `;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { cwd: ROOT, encoding: 'utf8' })) as { exports: string[]; loaded: string[] };
    expect(out).toEqual({ exports: [], loaded: [] });
  });
});
