// A real OpenID Connect provider for the SSO tests: `oidc-provider` with its development
// interactions (a login form that accepts any login and password, then a consent page).
//
// Configured from the environment:
//   OIDC_PORT       port on 127.0.0.1 (0: pick one; the chosen one is printed)
//   OIDC_CLIENTS    JSON list of {client_id, client_secret, redirect_uris}
//   OIDC_ACCOUNTS   JSON object login -> {email, email_verified, name}; other logins get
//                   <login>@example.test, unverified
// Prints "READY <issuer>" once it listens.
import http from "node:http";
import Provider from "oidc-provider";

const port = Number(process.env.OIDC_PORT || "0");
const clients = JSON.parse(process.env.OIDC_CLIENTS || "[]");
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS || "{}");

const server = http.createServer();
server.listen(port, "127.0.0.1", () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
      ...c,
    })),
    claims: { openid: ["sub"], email: ["email", "email_verified"], profile: ["name"] },
    // Put the granted claims in the ID token as Entra ID and Google do (not only in
    // /userinfo), so the relying party's ID-token path is what is tested.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    async findAccount(_ctx, id) {
      const known = accounts[id];
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: known ? known.email : `${id}@example.test`,
            email_verified: known ? Boolean(known.email_verified) : false,
            name: known && known.name ? known.name : id,
          };
        },
      };
    },
  });
  provider.on("server_error", (_ctx, err) => console.error("server_error", err));
  server.on("request", provider.callback());
  console.log(`READY ${issuer}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
