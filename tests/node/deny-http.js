// `wasi:http/outgoing-handler` for the tests: refuse every request, so the component can
// reach no network (jco's default maps wasi:http to preview2-shim, which makes real
// requests). Only `tarindex.open-remote` uses it; the refusal comes back as its error.
export function handle() {
  throw { payload: { tag: 'HTTP-request-denied' } };
}
