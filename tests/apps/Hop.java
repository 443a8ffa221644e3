// One hop of a test call chain on the JDK alone: com.sun.net.httpserver with
// a thread pool, and HttpURLConnection (keep-alive) for the next hop.
// GET /x?q -> "<pod>" or "<pod> -> <answer of --next>"; with --echo-query
// the pod name is followed by "(<query>)". It copies no header.
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Hop {
    public static void main(String[] args) throws Exception {
        int port = 8080;
        String next = null;
        boolean echo = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--next" -> next = args[++i];
                case "--echo-query" -> echo = true;
                default -> throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        String name = System.getenv().getOrDefault("TAGGER_POD", "hop");
        String nextUrl = next;
        boolean echoQuery = echo;
        HttpServer server = HttpServer.create(new InetSocketAddress("0.0.0.0", port), 256);
        server.setExecutor(Executors.newFixedThreadPool(64));
        server.createContext("/", exchange -> {
            URI uri = exchange.getRequestURI();
            String query = uri.getRawQuery() == null ? "" : uri.getRawQuery();
            String answer = echoQuery ? name + "(" + query + ")" : name;
            if (nextUrl != null) {
                String target = nextUrl + uri.getRawPath().substring(1) + (query.isEmpty() ? "" : "?" + query);
                try {
                    HttpURLConnection connection = (HttpURLConnection) URI.create(target).toURL().openConnection();
                    connection.setConnectTimeout(5000);
                    connection.setReadTimeout(10000);
                    try (InputStream in = connection.getInputStream()) {
                        answer += " -> " + new String(in.readAllBytes(), StandardCharsets.UTF_8);
                    }
                } catch (Exception e) {
                    answer += " -> ERROR(" + e + ")";
                }
            }
            byte[] body = answer.getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", "text/plain");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
    }
}
