package fila.bench.kstreams;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The word-count benchmark's tools (benches/wordcount/run).
 *
 * <p>{@code produce} writes every line of a file as one unkeyed record to
 * a topic, line i to partition i mod P (round robin), and waits until all
 * are acknowledged.
 *
 * <p>{@code watch} reads a word-count output topic, committed records
 * only, from the start, while the system under test runs. It prints
 * "lines: ready" once it reads from every partition, "lines: first MS" at
 * the first output and "lines: done MS" once every word's highest count
 * equals its due count in the --expect file (MS: wall-clock epoch
 * milliseconds of the read). When its standard input closes (or at
 * --timeout-s), it reads to the end of every partition and prints one
 * JSON line: the records, the words whose highest count is exact
 * ("reached_words"), the words whose last record (in partition order)
 * holds the exact count ("exact_words"), the records whose count is below
 * the one before it for the same word ("inversions"), and of the counts
 * emitted per word how many were twice, missing from 1..n, or above n. --format json reads values {"word": w, "count": n} (fila,
 * Flink); --format long reads a string key and an 8-byte big-endian long
 * value (Kafka Streams' Serdes.Long).
 *
 * <p>{@code drop} deletes every topic whose name starts with one of the
 * prefixes (a turn's input, output and internal topics).
 */
public final class Lines {
    static final String USAGE = String.join("\n",
        "usage: java -cp 'target/job.jar:target/lib/*' fila.bench.kstreams.Lines produce|watch|drop [options]",
        "  --brokers HOST:PORT[,...]   Kafka bootstrap servers [127.0.0.1:9092]",
        "  --topic T                   produce: the topic to write; watch: the topic to read",
        "  --file F                    produce: the lines to write, one record each",
        "  --expect F                  watch: the due counts, one 'word count' per line",
        "  --format F                  watch: json or long [json]",
        "  --timeout-s S               watch: stop waiting after S seconds [300]",
        "  --prefixes P1,P2,...        drop: delete the topics whose names start with these");

    private Lines() {}

    public static void main(String[] argv) throws Exception {
        if (argv.length < 1 || argv[0].equals("-h") || argv[0].equals("--help")) {
            System.out.println(USAGE);
            return;
        }
        Map<String, String> args = Args.parse(Arrays.copyOfRange(argv, 1, argv.length), USAGE, "lines");
        String brokers = args.getOrDefault("brokers", "127.0.0.1:9092");
        switch (argv[0]) {
            case "produce" -> produce(brokers, need(args, "topic"), Path.of(need(args, "file")));
            case "watch" -> System.exit(watch(brokers, need(args, "topic"), Path.of(need(args, "expect")),
                args.getOrDefault("format", "json"),
                Args.count(args, "timeout-s", 300, 1, 86_400, USAGE, "lines")));
            case "drop" -> drop(brokers, need(args, "prefixes").split(","));
            default -> Args.fail(USAGE, "lines", "produce, watch or drop, not " + argv[0]);
        }
    }

    private static String need(Map<String, String> args, String key) {
        String v = args.get(key);
        if (v == null || v.isBlank()) {
            Args.fail(USAGE, "lines", "--" + key + " is required");
        }
        return v;
    }

    static void produce(String brokers, String topic, Path file) throws Exception {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 20);
        p.put(ProducerConfig.BATCH_SIZE_CONFIG, 256 * 1024);
        long started = System.nanoTime();
        long n = 0;
        try (KafkaProducer<byte[], byte[]> producer =
                 new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer());
             BufferedReader in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            int partitions = producer.partitionsFor(topic).size();
            String line;
            while ((line = in.readLine()) != null) {
                producer.send(new ProducerRecord<>(topic, (int) (n % partitions), null,
                    line.getBytes(StandardCharsets.UTF_8)), (meta, e) -> {
                        if (e != null) {
                            System.err.println("lines: a send failed: " + e);
                            System.exit(1);
                        }
                    });
                n++;
            }
            producer.flush();
        }
        System.out.printf("lines: produced %d records to %s in %.2f s%n", n, topic,
            (System.nanoTime() - started) / 1e9);
    }

    static int watch(String brokers, String topic, Path expectFile, String format, int timeoutS)
            throws IOException {
        if (!format.equals("json") && !format.equals("long")) {
            Args.fail(USAGE, "lines", "--format is json or long, not '" + format + "'");
        }
        boolean json = format.equals("json");
        Map<String, Integer> index = new HashMap<>();
        List<String> words = new ArrayList<>();
        List<Long> dueList = new ArrayList<>();
        for (String line : Files.readAllLines(expectFile, StandardCharsets.UTF_8)) {
            if (line.isBlank()) {
                continue;
            }
            String[] f = line.trim().split(" ");
            index.put(f[0], words.size());
            words.add(f[0]);
            dueList.add(Long.parseLong(f[1]));
        }
        int nw = words.size();
        long[] due = new long[nw];
        long[] last = new long[nw];
        long[] max = new long[nw];
        long inversions = 0;
        int[][] seen = new int[nw][];
        for (int i = 0; i < nw; i++) {
            due[i] = dueList.get(i);
            seen[i] = new int[(int) due[i] + 1];
        }
        long[] above = new long[nw];
        long records = 0;
        long unreadable = 0;
        long unknown = 0;
        int reached = 0;  // words whose highest count equals the due count
        long firstMs = -1;
        long doneMs = -1;
        long lastTs = -1;
        long doneRecordTs = -1;  // the timestamp of the last record read at "done"

        AtomicBoolean finish = new AtomicBoolean();
        Thread stdin = new Thread(() -> {
            try {
                while (System.in.read() >= 0) {
                    // wait for the end of standard input
                }
            } catch (IOException e) {
                // treated as the end
            }
            finish.set(true);
        }, "stdin");
        stdin.setDaemon(true);
        stdin.start();

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        props.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, 50);
        props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 5000);
        ObjectMapper mapper = new ObjectMapper();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutS);
        boolean reachedEnd = false;
        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            for (PartitionInfo pi : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                parts.add(new TopicPartition(topic, pi.partition()));
            }
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            for (TopicPartition tp : parts) {
                consumer.position(tp, Duration.ofSeconds(30));
            }
            System.out.println("lines: ready (" + parts.size() + " partitions, " + nw + " words)");
            System.out.flush();
            Map<TopicPartition, Long> end = null;
            while (true) {
                if (end == null && (finish.get() || System.nanoTime() > deadline)) {
                    // Read committed, the end is the last stable offset.
                    end = consumer.endOffsets(parts, Duration.ofSeconds(30));
                    deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
                }
                if (end != null) {
                    boolean atEnd = true;
                    for (TopicPartition tp : parts) {
                        atEnd &= consumer.position(tp, Duration.ofSeconds(30)) >= end.get(tp);
                    }
                    if (atEnd) {
                        reachedEnd = true;
                        break;
                    }
                    if (System.nanoTime() > deadline) {
                        break;
                    }
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(100))) {
                    records++;
                    lastTs = r.timestamp();
                    if (firstMs < 0) {
                        firstMs = System.currentTimeMillis();
                        System.out.println("lines: first " + firstMs);
                        System.out.flush();
                    }
                    String word;
                    long count;
                    try {
                        long[] fast = json ? fastCount(r.value()) : null;
                        if (fast != null) {
                            word = new String(r.value(), (int) fast[0], (int) fast[1], StandardCharsets.UTF_8);
                            count = fast[2];
                        } else if (json) {
                            JsonNode v = mapper.readTree(r.value());
                            word = v.get("word").asText();
                            JsonNode c = v.get("count");
                            if (c == null || !c.canConvertToLong()) {
                                throw new IOException("no count");
                            }
                            count = c.asLong();
                        } else {
                            word = new String(r.key(), StandardCharsets.UTF_8);
                            count = ByteBuffer.wrap(r.value()).getLong();
                        }
                    } catch (Exception e) {
                        unreadable++;
                        continue;
                    }
                    Integer w = index.get(word);
                    if (w == null) {
                        unknown++;
                        continue;
                    }
                    if (count >= 1 && count <= due[w]) {
                        seen[w][(int) count]++;
                    } else {
                        above[w]++;
                    }
                    if (count < last[w]) {
                        inversions++;
                    }
                    last[w] = count;
                    if (count > max[w]) {
                        boolean was = max[w] == due[w];
                        max[w] = count;
                        reached += (max[w] == due[w] ? 1 : 0) - (was ? 1 : 0);
                    }
                }
                if (doneMs < 0 && reached == nw) {
                    doneMs = System.currentTimeMillis();
                    doneRecordTs = lastTs;
                    System.out.println("lines: done " + doneMs);
                    System.out.flush();
                }
            }
        }
        long twice = 0;
        long missing = 0;
        long beyond = 0;
        int sequences = 0;  // words whose counts are 1..n each once
        Set<String> off = new TreeSet<>();
        for (int i = 0; i < nw; i++) {
            boolean ok = above[i] == 0;
            for (int c = 1; c <= due[i]; c++) {
                if (seen[i][c] == 0) {
                    missing++;
                    ok = false;
                } else if (seen[i][c] > 1) {
                    twice += seen[i][c] - 1;
                    ok = false;
                }
            }
            beyond += above[i];
            sequences += ok ? 1 : 0;
            if ((last[i] != due[i] || max[i] != due[i]) && off.size() < 10) {
                off.add(words.get(i) + " last " + last[i] + " max " + max[i] + " due " + due[i]);
            }
        }
        int exactNow = 0;
        int reachedNow = 0;
        for (int i = 0; i < nw; i++) {
            exactNow += last[i] == due[i] ? 1 : 0;
            reachedNow += max[i] == due[i] ? 1 : 0;
        }
        StringBuilder offJson = new StringBuilder("[");
        for (String s : off) {
            offJson.append(offJson.length() > 1 ? "," : "").append('"').append(s).append('"');
        }
        offJson.append(']');
        System.out.println("{\"records\":" + records + ",\"words\":" + nw + ",\"reached_words\":" + reachedNow
            + ",\"exact_words\":" + exactNow + ",\"inversions\":" + inversions
            + ",\"sequence_words\":" + sequences + ",\"twice\":" + twice + ",\"missing\":" + missing
            + ",\"above\":" + beyond + ",\"unreadable\":" + unreadable + ",\"unknown_words\":" + unknown
            + ",\"first_ms\":" + firstMs + ",\"done_ms\":" + doneMs
            + ",\"done_record_ts_ms\":" + doneRecordTs + ",\"read_to_end\":" + reachedEnd
            + ",\"off\":" + offJson + "}");
        System.out.flush();
        return 0;
    }

    private static final byte[] WORD = "{\"word\":\"".getBytes(StandardCharsets.UTF_8);
    private static final byte[] COUNT = "\",\"count\":".getBytes(StandardCharsets.UTF_8);

    /**
     * {"word":"W","count":N} exactly as fila and WordCountJob write it, W
     * without escapes: {offset of W, length of W, N}; null for anything
     * else (then parsed as JSON).
     */
    static long[] fastCount(byte[] v) {
        if (v == null || v.length < WORD.length + COUNT.length + 2) {
            return null;
        }
        for (int i = 0; i < WORD.length; i++) {
            if (v[i] != WORD[i]) {
                return null;
            }
        }
        int end = WORD.length;
        while (end < v.length && v[end] != '"') {
            if (v[end] == '\\') {
                return null;
            }
            end++;
        }
        if (end + COUNT.length >= v.length) {
            return null;
        }
        for (int i = 0; i < COUNT.length; i++) {
            if (v[end + i] != COUNT[i]) {
                return null;
            }
        }
        long n = 0;
        int i = end + COUNT.length;
        int digits = 0;
        while (i < v.length && v[i] >= '0' && v[i] <= '9' && digits < 18) {
            n = n * 10 + (v[i] - '0');
            i++;
            digits++;
        }
        if (digits == 0 || i != v.length - 1 || v[i] != '}') {
            return null;
        }
        return new long[] {WORD.length, end - WORD.length, n};
    }

    static void drop(String brokers, String[] prefixes) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 30000);
        try (Admin admin = Admin.create(props)) {
            List<String> doomed = new ArrayList<>();
            for (String t : admin.listTopics().names().get(30, TimeUnit.SECONDS)) {
                for (String p : prefixes) {
                    if (!p.isBlank() && t.startsWith(p.trim())) {
                        doomed.add(t);
                        break;
                    }
                }
            }
            if (!doomed.isEmpty()) {
                try {
                    admin.deleteTopics(doomed).all().get(60, TimeUnit.SECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) {
                        throw e;
                    }
                }
            }
            System.out.println("lines: deleted " + doomed.size() + " topic(s): " + String.join(",", doomed));
        }
    }
}
