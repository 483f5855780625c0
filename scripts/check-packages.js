'use strict'
// Checks the shape of what gets published, including the platform packages no machine here can
// build: every napi target has npm/<target>/ with the right name, version, os / cpu / libc, main
// and files, and the main package lists each one in optionalDependencies at its own version.
// With --tarballs <dir> (the output of npm run pack:all) it also checks the tarballs: the main one
// ships exactly dist/ (the facade and its types), the loader and the docs; each platform one its
// binary and the same manifest as npm/<target>/.
// Usage: node scripts/check-packages.js [--tarballs <dir>]

const fs = require('node:fs')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { parseTriple } = require('@napi-rs/cli')

const root = path.join(__dirname, '..')
const readJson = (file) => JSON.parse(fs.readFileSync(path.join(root, file), 'utf8'))

/** The targets of napi-rs's package-template that this package ships (issue 12). */
const TARGETS = [
  'x86_64-unknown-linux-gnu',
  'x86_64-unknown-linux-musl',
  'aarch64-unknown-linux-gnu',
  'aarch64-unknown-linux-musl',
  'x86_64-apple-darwin',
  'aarch64-apple-darwin',
  'x86_64-pc-windows-msvc',
  'aarch64-pc-windows-msvc',
]

const problems = []
const check = (ok, message) => {
  if (!ok) problems.push(message)
  return ok
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b)

function checkManifests() {
  const pkg = readJson('package.json')
  const { binaryName, packageName, targets } = pkg.napi
  check(same([...targets].sort(), [...TARGETS].sort()), `package.json napi.targets must be exactly ${TARGETS.join(', ')}`)
  const expectedOptional = {}
  const lines = []
  for (const triple of targets) {
    const t = parseTriple(triple)
    const abi = t.platformArchABI
    const name = `${packageName}-${abi}`
    const file = `${binaryName}.${abi}.node`
    expectedOptional[name] = pkg.version
    const manifest = path.join('npm', abi, 'package.json')
    if (!check(fs.existsSync(path.join(root, manifest)), `${manifest} is missing`)) continue
    const p = readJson(manifest)
    const libc = t.platform === 'linux' ? [t.abi === 'musl' ? 'musl' : 'glibc'] : undefined
    check(p.name === name, `${manifest}: name ${p.name}, expected ${name}`)
    check(p.version === pkg.version, `${manifest}: version ${p.version}, expected ${pkg.version}`)
    check(same(p.os, [t.platform]), `${manifest}: os ${JSON.stringify(p.os)}, expected ["${t.platform}"]`)
    check(same(p.cpu, [t.arch]), `${manifest}: cpu ${JSON.stringify(p.cpu)}, expected ["${t.arch}"]`)
    check(same(p.libc, libc), `${manifest}: libc ${JSON.stringify(p.libc)}, expected ${JSON.stringify(libc)}`)
    check(p.main === file, `${manifest}: main ${p.main}, expected ${file}`)
    check(same(p.files, [file]), `${manifest}: files ${JSON.stringify(p.files)}, expected ["${file}"]`)
    for (const key of ['license', 'engines', 'repository']) check(same(p[key], pkg[key]), `${manifest}: ${key} differs from package.json's`)
    check(!p.scripts, `${manifest}: a platform package must have no scripts`)
    lines.push(`${name}@${p.version} (${[t.platform, t.arch, ...(libc ?? [])].join('/')})`)
  }
  check(same(pkg.optionalDependencies, expectedOptional), `package.json optionalDependencies must be exactly ${JSON.stringify(expectedOptional)}`)
  const dirs = fs.readdirSync(path.join(root, 'npm')).filter((d) => !Object.keys(expectedOptional).includes(`${packageName}-${d}`))
  check(dirs.length === 0, `npm/ has folders for no napi target: ${dirs.join(', ')}`)
  return { pkg, lines }
}

function tarList(tgz) {
  return execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' })
    .split('\n')
    .filter((f) => f && !f.endsWith('/'))
    .map((f) => f.replace(/^package\//, ''))
    .sort()
}

function tarManifest(tgz) {
  return JSON.parse(execFileSync('tar', ['-xzOf', tgz, 'package/package.json'], { encoding: 'utf8' }))
}

function listDir(dir, prefix = '') {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listDir(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
}

function checkTarballs(dir, pkg) {
  const { binaryName, packageName } = pkg.napi
  const main = path.join(dir, `${packageName}-${pkg.version}.tgz`)
  if (!check(fs.existsSync(main), `${main} is missing`)) return []
  const expected = [
    'LICENSE',
    'README.md',
    'package.json',
    'binding.js',
    'binding.d.ts',
    'pg/package.json',
    ...listDir(path.join(root, 'dist')).map((f) => `dist/${f}`),
  ].sort()
  const files = tarList(main)
  check(same(files, expected), `${path.basename(main)} must hold exactly ${expected.join(', ')}; it holds ${files.join(', ')}`)
  check(
    files.filter((f) => f.startsWith('dist/')).every((f) => /\.(js|mjs|d\.ts|d\.mts)$/.test(f)),
    `${path.basename(main)}: dist/ may hold only .js, .mjs, .d.ts and .d.mts files`,
  )
  check(same(tarManifest(main).optionalDependencies, pkg.optionalDependencies), `${path.basename(main)}: optionalDependencies differ from package.json's`)
  const lines = [`${path.basename(main)}: ${files.length} files`]
  for (const tgz of fs.readdirSync(dir).filter((f) => f.startsWith(`${packageName}-`) && f.endsWith('.tgz') && f !== path.basename(main))) {
    const abi = tgz.slice(packageName.length + 1, -`-${pkg.version}.tgz`.length)
    const file = `${binaryName}.${abi}.node`
    const manifest = path.join('npm', abi, 'package.json')
    if (!check(fs.existsSync(path.join(root, manifest)), `${tgz} matches no npm/<target>/`)) continue
    const tarFiles = tarList(path.join(dir, tgz))
    check(same(tarFiles, ['README.md', file, 'package.json'].sort()), `${tgz} must hold README.md, ${file} and package.json; it holds ${tarFiles.join(', ')}`)
    check(same(tarManifest(path.join(dir, tgz)), readJson(manifest)), `${tgz}: package.json differs from ${manifest}`)
    lines.push(`${tgz}: ${file}`)
  }
  return lines
}

const { pkg, lines } = checkManifests()
const at = process.argv.indexOf('--tarballs')
const tarLines = at > 0 ? checkTarballs(path.resolve(process.argv[at + 1]), pkg) : []
if (problems.length > 0) {
  for (const p of problems) console.error(`check-packages: ${p}`)
  process.exitCode = 1
} else {
  console.log(`check-packages: ${lines.length} platform packages in shape, all in optionalDependencies at ${pkg.version}`)
  for (const l of [...lines, ...tarLines]) console.log(`  ${l}`)
}
