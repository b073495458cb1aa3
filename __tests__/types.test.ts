// Type tests. ts-jest transpiles only here (isolatedModules), so the checks run the TypeScript
// compiler themselves: a strict consumer against lib/ and against the built declarations.
import { beforeAll, describe, expect, test } from '@jest/globals';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { DIST, ROOT, ensureDist } from './helpers/build';

const FIXTURE = path.join(__dirname, 'types', 'consumer.ts');

const STRICT: ts.CompilerOptions = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  lib: ['lib.es2022.d.ts'],
  types: ['node'],
  esModuleInterop: true,
  skipLibCheck: false,
  noUnusedLocals: false,
};

/** Diagnostics of one program, as `file:line: message` strings (only the files we wrote). */
function compile(files: string[], options: ts.CompilerOptions): Array<{ file: string; line: number; text: string }> {
  const program = ts.createProgram(files, options);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line + 1 : 0;
    return { file: d.file?.fileName ?? '', line, text: ts.flattenDiagnosticMessageText(d.messageText, '\n') };
  });
}

/** The `@ts-expect-error -- expect: TEXT` lines of the fixture: 1-based line of the code, and TEXT. */
function expectations(source: string): Array<{ line: number; text: string }> {
  const out: Array<{ line: number; text: string }> = [];
  source.split('\n').forEach((l, i) => {
    const m = /^\s*\/\/ @ts-expect-error -- expect: (.+)$/.exec(l);
    if (m) out.push({ line: i + 2, text: m[1].trim() });
  });
  return out;
}

describe('types seen by a strict consumer', () => {
  const source = readFileSync(FIXTURE, 'utf8');
  const expected = expectations(source);

  test('the fixture has the expected-error lines this suite relies on', () => {
    expect(expected.map((e) => e.text)).toEqual(expect.arrayContaining(["'retyr'", "'tiems'", "'memoryStore'", "'guard'", "not assignable to type 'string'"]));
  });

  // One program for both checks (the type-checking of lib/ and express is shared).
  const bareDir = path.join(ROOT, '.tmp', `types-bare-${process.pid}`);
  const bare = path.join(bareDir, 'consumer.ts');
  let diags: ReturnType<typeof compile> = [];
  beforeAll(() => {
    mkdirSync(bareDir, { recursive: true });
    try {
      // The same fixture with every expected-error directive removed.
      writeFileSync(bare, source.replace(/^(\s*)\/\/ @ts-expect-error -- expect: .*$/gm, '$1// (directive removed)').split("'../../lib").join(`'${path.join(ROOT, 'lib')}`));
      diags = compile([FIXTURE, bare], { ...STRICT, module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 });
    } finally {
      rmSync(bareDir, { recursive: true, force: true });
    }
  }, 120_000);

  test('compiles against lib/: res.locals typed, option typos and wrong types rejected', () => {
    expect(diags.filter((d) => d.file !== bare).map((d) => `${path.relative(ROOT, d.file)}:${d.line}: ${d.text}`)).toEqual([]);
  });

  test('each expected error is the intended one (the directives removed, the errors appear)', () => {
    const own = diags.filter((d) => d.file === bare);
    for (const e of expected) {
      const at = own.filter((d) => d.line === e.line);
      expect({ line: e.line, messages: at.map((d) => d.text).join(' | ') }).toEqual({ line: e.line, messages: expect.stringContaining(e.text) });
    }
    // Nothing else fails: every error is on an expected line.
    const stray = own.filter((d) => !expected.some((e) => e.line === d.line));
    expect(stray.map((d) => `${d.line}: ${d.text}`)).toEqual([]);
  });

  describe('built declarations', () => {
    beforeAll(() => ensureDist(), 120_000);

    test('dist/index.d.ts pulls in the res.locals augmentation (declare global in dist/types.d.ts)', () => {
      const index = readFileSync(path.join(DIST, 'index.d.ts'), 'utf8');
      expect(index).toMatch(/from '\.\/types'/);
      const types = readFileSync(path.join(DIST, 'types.d.ts'), 'utf8');
      const global = types.slice(types.indexOf('declare global'));
      expect(types).toContain('declare global');
      // the augmentation names the module's own types (types.d.ts imports no other module of ours)
      expect(global).toMatch(/interface Locals \{[^}]*channel\?: Channel;[^}]*distribution\?: Distribution;/s);
      expect(types).toMatch(/export interface Channel \{/);
      expect(types).toMatch(/export interface Distribution \{/);
      expect(types).not.toMatch(/from '\.\//);
    });

    test('the optional peer prom-client never appears in the declarations', () => {
      for (const f of readdirSync(DIST).filter((n) => n.endsWith('.d.ts'))) {
        const imports = /from ['"]prom-client['"]|import\(['"]prom-client['"]\)|require\(['"]prom-client['"]\)/.test(readFileSync(path.join(DIST, f), 'utf8'));
        expect({ f, imports }).toEqual({ f, imports: false });
      }
    });

    test('a strict consumer importing the package by name (exports -> types) compiles, skipLibCheck off', () => {
      // A file inside the package may import it by its own name under node16 resolution, which
      // reads package.json `exports` exactly as a consumer's compiler does.
      const dir = path.join(ROOT, '.tmp', `types-consumer-${process.pid}`);
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, 'consumer.ts');
      try {
        // every entry by its published name: the main entry and each subpath (exports -> types)
        writeFileSync(file, source.split("'../../lib'").join("'express-channel-distributor'").replace(/'\.\.\/\.\.\/lib\/entry\/(\w+)'/g, "'express-channel-distributor/$1'"));
        const diags = compile([file], {
          ...STRICT, module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16, exactOptionalPropertyTypes: true,
        });
        expect(diags.map((d) => `${path.relative(ROOT, d.file)}:${d.line}: ${d.text}`)).toEqual([]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }, 60_000);
  });
});
