// The frame of a child script run by helpers/consumer.js: `report(out, main)` runs `main`, then
// prints `out` as one JSON line (with `failure` when `main` threw) and exits, non-zero on failure.

/** Rejects after `ms` (the timer does not hold the process open). */
export const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} not within ${ms} ms`)), ms).unref())

export async function report(out, main) {
  try {
    await main()
    console.log(JSON.stringify(out))
    process.exit(0)
  } catch (e) {
    out.failure = String(e?.stack ?? e)
    console.log(JSON.stringify(out))
    process.exit(1)
  }
}
