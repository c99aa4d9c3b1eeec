"""The web dashboard: pages served by the app, drawn in the browser from the public API.

The server renders only each page's frame (title, navigation, which object it shows); the data
comes from the same JSON API and event stream that clients and the CLI use, fetched by small ES
modules with the browser's session cookie. So the dashboard cannot show what the API would not
(tenancy, scopes and paging are the API's), a live page needs no reload (it follows the job's
SSE stream), and there is no second backend to keep in step. Everything it loads is in this
package (the charting library vendored under static/vendor, recorded in vendor.json): it renders
with the network closed."""
