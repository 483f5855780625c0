'use strict'
// Throw-away certificates for the TLS tests, made with the openssl CLI (P-256 keys, valid
// for two days from now).

const { execFileSync } = require('node:child_process')
const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] })
}

function writeExt(dir, name, lines) {
  const file = path.join(dir, `${name}.ext`)
  fs.writeFileSync(file, lines.join('\n') + '\n')
  return file
}

/** A self-signed CA: { name, cert, key } (file paths). */
function makeCa(dir, name) {
  const ext = writeExt(dir, name, ['basicConstraints = critical, CA:TRUE', 'keyUsage = critical, keyCertSign, cRLSign', 'subjectKeyIdentifier = hash'])
  const key = path.join(dir, `${name}.key`)
  const cert = path.join(dir, `${name}.crt`)
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key], dir)
  openssl(['req', '-new', '-key', key, '-subj', `/CN=${name}`, '-out', `${name}.csr`], dir)
  openssl(['x509', '-req', '-in', `${name}.csr`, '-signkey', key, '-days', '2', '-extfile', ext, '-out', cert], dir)
  return { name, cert, key }
}

/**
 * A leaf certificate signed by `ca`. `san` like ['DNS:localhost', 'IP:127.0.0.1'];
 * `usage` 'serverAuth' or 'clientAuth'. Returns { cert, key } (file paths).
 */
function makeLeaf(dir, name, ca, { cn = name, san = [], usage = 'serverAuth' } = {}) {
  const ext = writeExt(dir, name, [
    'basicConstraints = critical, CA:FALSE',
    'keyUsage = critical, digitalSignature',
    `extendedKeyUsage = ${usage}`,
    'authorityKeyIdentifier = keyid',
    ...(san.length ? [`subjectAltName = ${san.join(', ')}`] : []),
  ])
  const key = path.join(dir, `${name}.key`)
  const cert = path.join(dir, `${name}.crt`)
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key], dir)
  openssl(['req', '-new', '-key', key, '-subj', `/CN=${cn}`, '-out', `${name}.csr`], dir)
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-set_serial',
      `0x${crypto.randomBytes(8).toString('hex')}`,
      '-days',
      '2',
      '-extfile',
      ext,
      '-out',
      cert,
    ],
    dir,
  )
  return { cert, key }
}

/**
 * Installs a server certificate and key into a PostgreSQL data directory as server.crt /
 * server.key (the defaults of ssl_cert_file / ssl_key_file), owned like the directory (the
 * OS user the server runs as) with the mode PostgreSQL insists on for the key (0600).
 * `ca`, if given, becomes root.crt for client certificate checks (ssl_ca_file=root.crt).
 */
function installServerCert(dataDir, leaf, ca) {
  const { uid, gid } = fs.statSync(dataDir)
  const put = (src, name, mode) => {
    const dest = path.join(dataDir, name)
    fs.copyFileSync(src, dest)
    fs.chmodSync(dest, mode)
    if (process.getuid && process.getuid() === 0) fs.chownSync(dest, uid, gid)
  }
  put(leaf.cert, 'server.crt', 0o644)
  put(leaf.key, 'server.key', 0o600)
  if (ca) put(ca.cert, 'root.crt', 0o644)
}

module.exports = { makeCa, makeLeaf, installServerCert }
