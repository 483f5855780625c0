'use strict'
// What every pool under test is configured with, whichever library it is: the pool size, and the
// server's address in node-postgres's and postgres.js's option shapes. Also the benchmark's
// random row id.

const POOL_SIZE = 10

const randomId = () => 1 + Math.floor(Math.random() * 10000)

/** node-postgres `Pool` options (also taken by pgdbpool/pg) for `endpoint`. */
function pgPoolOptions(endpoint, app) {
  return {
    host: endpoint.host,
    port: endpoint.port,
    user: endpoint.user,
    password: endpoint.pass,
    database: endpoint.name,
    max: POOL_SIZE,
    application_name: app,
  }
}

/** postgres.js options for `endpoint`: the same, with application_name where postgres.js takes it. */
function postgresOptions(endpoint, app) {
  const { application_name, ...options } = pgPoolOptions(endpoint, app)
  return { ...options, connection: { application_name } }
}

module.exports = { POOL_SIZE, randomId, pgPoolOptions, postgresOptions }
