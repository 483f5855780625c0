'use strict'
// The package's entry points as a user reaches them (through package.json's exports), and the
// shape of the platform packages. The full install from a registry is scripts/release-rehearsal.sh.

const test = require('ava')
const path = require('node:path')
const { execFileSync } = require('node:child_process')

const root = path.join(__dirname, '..')

test('ESM named exports are the CommonJS exports, the same objects', async (t) => {
  const cjs = require('pgdbpool')
  const esm = await import('pgdbpool')
  const { default: defaultExport, ...named } = esm
  t.deepEqual(Object.keys(named).sort(), Object.keys(cjs).sort())
  for (const key of Object.keys(cjs)) t.is(named[key], cjs[key], key)
  t.is(defaultExport, cjs)
  t.is(typeof named.init, 'function')
  t.is(typeof named.Handler, 'function')
})

test('the entry points resolve into dist/, and the loader stays at the package root', (t) => {
  t.is(require.resolve('pgdbpool'), path.join(root, 'dist', 'index.js'))
  t.is(require.resolve('pgdbpool/package.json'), path.join(root, 'package.json'))
  t.is(require('../dist/binding.js'), require('../binding.js'))
})

test('platform packages: shape, and listed in optionalDependencies at the same version', (t) => {
  const out = execFileSync(process.execPath, [path.join(root, 'scripts', 'check-packages.js')], { encoding: 'utf8' })
  t.regex(out, /8 platform packages in shape/)
})
