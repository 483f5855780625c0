'use strict'
// Writes every publishable tarball into one folder: the main package, and each platform package
// (npm/<target>/) that has its binary. A binary is taken from npm/<target>/ (where `napi artifacts`
// puts CI's builds) or else from the repository root (where a local `npm run build` puts it).
// Platform packages are packed from a staged copy, so the repository is left as it was.
// Usage: npm run pack:all -- <dir>   (node scripts/pack-all.js <dir>)

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { parseTriple } = require('@napi-rs/cli')

const root = path.join(__dirname, '..')
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

function pack(dir, dest) {
  const out = execFileSync(npm, ['pack', '--json', '--pack-destination', dest], {
    cwd: dir,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    shell: process.platform === 'win32',
  })
  // Lifecycle scripts (prepack) may print before the JSON.
  const [info] = JSON.parse(out.slice(out.indexOf('[')))
  return info
}

function main() {
  const arg = process.argv[2]
  if (!arg) throw new Error('usage: npm run pack:all -- <dir>')
  // npm runs scripts from the package root; a relative <dir> means the caller's directory.
  const dest = path.resolve(process.env.INIT_CWD || process.cwd(), arg)
  fs.mkdirSync(dest, { recursive: true })

  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'))
  const { binaryName, packageName, targets } = pkg.napi
  const written = []
  const skipped = []
  for (const triple of targets) {
    const abi = parseTriple(triple).platformArchABI
    const name = `${packageName}-${abi}`
    if (pkg.optionalDependencies?.[name] !== pkg.version) throw new Error(`package.json: optionalDependencies must list ${name} at ${pkg.version}`)
    const dir = path.join(root, 'npm', abi)
    const platformPkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
    if (platformPkg.name !== name || platformPkg.version !== pkg.version) throw new Error(`npm/${abi}/package.json must be ${name}@${pkg.version}`)
    const file = `${binaryName}.${abi}.node`
    const binary = [path.join(dir, file), path.join(root, file)].find((f) => fs.existsSync(f))
    if (!binary) {
      skipped.push(abi)
      continue
    }
    const stage = fs.mkdtempSync(path.join(os.tmpdir(), `pgdbpool-pack-${abi}-`))
    try {
      for (const f of fs.readdirSync(dir)) if (!f.endsWith('.node')) fs.copyFileSync(path.join(dir, f), path.join(stage, f))
      fs.copyFileSync(binary, path.join(stage, file))
      const info = pack(stage, dest)
      const files = info.files.map((f) => f.path).sort()
      if (!files.includes(file)) throw new Error(`${info.filename} lacks ${file}`)
      written.push(`${info.filename} (${path.relative(root, binary)})`)
    } finally {
      fs.rmSync(stage, { recursive: true, force: true })
    }
  }
  if (written.length === 0) throw new Error('no platform package has a binary: run npm run build (or npm run artifacts) first')
  if (!fs.existsSync(path.join(root, 'binding.js'))) throw new Error('binding.js is missing: run npm run build:native')

  const main = pack(root, dest)
  const files = main.files.map((f) => f.path)
  const stray = files.filter((f) => f.endsWith('.node'))
  if (stray.length > 0) throw new Error(`${main.filename} must not contain native binaries: ${stray.join(', ')}`)
  written.unshift(main.filename)

  console.log(`pack:all: ${written.length} tarballs in ${dest}`)
  for (const w of written) console.log(`  ${w}`)
  if (skipped.length > 0) console.log(`  (no binary here for: ${skipped.join(', ')})`)
}

try {
  main()
} catch (e) {
  console.error(`pack:all: ${e.message}`)
  process.exitCode = 1
}
