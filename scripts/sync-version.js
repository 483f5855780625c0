'use strict'
// The `version` script: after `npm version <v>` has set package.json's version (and `napi version`
// the npm/<target>/ packages'), brings everything else that names the version along with it:
//   - optionalDependencies: every platform package at the same version,
//   - package-lock.json's copy of them,
//   - the committed loader binding.js (it checks the platform package's version), rendered by the
//     napi CLI exactly as `napi build` renders it, so no Rust build is needed to cut a release.
// Run as the npm `version` lifecycle script it stages those files for npm's version commit.
// Usage: node scripts/sync-version.js   (also fine to run by hand)

const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { parseTriple, writeJsBinding } = require('@napi-rs/cli')

const root = path.join(__dirname, '..')
const readJson = (file) => JSON.parse(fs.readFileSync(path.join(root, file), 'utf8'))
const writeJson = (file, value) => fs.writeFileSync(path.join(root, file), `${JSON.stringify(value, null, 2)}\n`)

async function main() {
  const pkg = readJson('package.json')
  const { binaryName, packageName, targets } = pkg.napi
  const optional = Object.fromEntries(targets.map((t) => [`${packageName}-${parseTriple(t).platformArchABI}`, pkg.version]))
  pkg.optionalDependencies = optional
  writeJson('package.json', pkg)

  const changed = ['package.json', 'binding.js']
  if (fs.existsSync(path.join(root, 'package-lock.json'))) {
    const lock = readJson('package-lock.json')
    lock.version = pkg.version
    lock.packages[''].version = pkg.version
    lock.packages[''].optionalDependencies = optional
    writeJson('package-lock.json', lock)
    changed.push('package-lock.json')
  }

  for (const t of targets) {
    const dir = `npm/${parseTriple(t).platformArchABI}`
    const platformPkg = readJson(`${dir}/package.json`)
    if (platformPkg.version !== pkg.version) throw new Error(`${dir}/package.json is at ${platformPkg.version}, not ${pkg.version}: run napi version first`)
    changed.push(`${dir}/package.json`)
  }

  // The loader exports what the native module exports; keep that list, change only the version.
  const loader = fs.readFileSync(path.join(root, 'binding.js'), 'utf8')
  const idents = [...loader.matchAll(/^module\.exports\.(\w+) = nativeBinding\.\1$/gm)].map((m) => m[1])
  if (idents.length === 0) throw new Error('binding.js lists no exports: regenerate it with npm run build:native')
  await writeJsBinding({ platform: true, idents, jsBinding: 'binding.js', binaryName, packageName, version: pkg.version, outputDir: root })

  console.log(`sync-version: ${pkg.version} in ${changed.join(', ')}`)
  if (process.env.npm_lifecycle_event === 'version') execFileSync('git', ['add', '--', ...changed], { cwd: root, stdio: 'inherit' })
}

main().catch((e) => {
  console.error(`sync-version: ${e.message}`)
  process.exitCode = 1
})
