using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace AsyncOrmApi.Http;

/// <summary>
/// Serves a page and the start of a stream in each format in the process, before Kestrel listens, so that the first
/// client does not wait for what a process does once: the JIT and the lazy set-up of the pipeline (middleware, routing,
/// the rate limiter, EF Core, the serializers). A fresh process answers its first GET /a?limit=1 in 7-17 ms against 28-66
/// ms without, and a stream's first byte comes in 9-13 ms against 34-46 ms (curl, fresh processes alternating, 300,000 A;
/// issue 20).
/// </summary>
/// <remarks>
/// The requests run through the very application the host gives Kestrel, with no socket: their answers go nowhere, a
/// stream is cut after its first half megabyte, and none is logged or counted in the request metrics. They come from
/// no address, so no client's rate budget pays for them. The start takes 0.3-0.7 s longer (1.9-2.0 s against 1.3-1.8 s
/// to a first /health/live). A database that does not answer within <see cref="Deadline"/> only ends the warm-up: the
/// start goes on.
/// </remarks>
public static class WarmStart
{
    static readonly TimeSpan Deadline = TimeSpan.FromSeconds(2);

    static readonly (string Path, string Query, string Accept)[] Requests =
    [
        ("/a", "?limit=1", "application/json"),
        ("/a/stream", "", NdJsonLines.MediaType),
        ("/a/stream", "", "application/json"),
    ];

    /// <summary>Puts the warm-up in front of the server the host registered: Kestrel (a test host replaces both).</summary>
    public static WebApplicationBuilder AddWarmStart(this WebApplicationBuilder builder)
    {
        var inner = builder.Services.Last(d => d.ServiceType == typeof(IServer));
        builder.Services.Replace(ServiceDescriptor.Singleton<IServer>(services => new Server(
            inner.ImplementationInstance as IServer
            ?? inner.ImplementationFactory?.Invoke(services) as IServer
            ?? (IServer)ActivatorUtilities.CreateInstance(services, inner.ImplementationType!),
            services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(WarmStart).FullName!))));
        return builder;
    }

    /// <summary>Whether a request is the warm-up's, which the request log leaves out.</summary>
    public static bool IsWarmUp(HttpContext http) => http.Features.Get<Marker>() is not null;

    sealed class Marker;

    sealed class Server(IServer kestrel, ILogger log) : IServer
    {
        public IFeatureCollection Features => kestrel.Features;

        public async Task StartAsync<TContext>(IHttpApplication<TContext> application, CancellationToken ct) where TContext : notnull
        {
            using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
            deadline.CancelAfter(Deadline);
            foreach (var (path, query, accept) in Requests)
                if (!deadline.IsCancellationRequested)
                    await ServeAsync(application, path, query, accept, deadline.Token);
            await kestrel.StartAsync(application, ct);
        }

        async Task ServeAsync<TContext>(IHttpApplication<TContext> application, string path, string query, string accept,
            CancellationToken deadline) where TContext : notnull
        {
            using var aborted = CancellationTokenSource.CreateLinkedTokenSource(deadline);
            var features = new FeatureCollection();
            features.Set<IHttpRequestFeature>(new HttpRequestFeature
            {
                Protocol = "HTTP/1.1", Scheme = "http", Method = HttpMethods.Get, Path = path, QueryString = query,
                Headers = { Host = "localhost", Accept = accept },
            });
            var response = new Response();
            features.Set<IHttpResponseFeature>(response);
            var body = new CutAfter(aborted);
            features.Set<IHttpResponseBodyFeature>(new StreamResponseBodyFeature(body));
            features.Set<IHttpRequestLifetimeFeature>(new HttpRequestLifetimeFeature { RequestAborted = aborted.Token });
            features.Set<IHttpConnectionFeature>(new HttpConnectionFeature());
            features.Set(new Marker());
            var started = TimeProvider.System.GetTimestamp();
            var context = application.CreateContext(features);
            // Hosting has set its metrics feature by now: a warm-up is no request of the API's.
            if (features.Get<IHttpMetricsTagsFeature>() is { } metrics)
                metrics.MetricsDisabled = true;
            Exception? failed = null;
            try
            {
                await application.ProcessRequestAsync(context);
            }
            catch (Exception) when (aborted.IsCancellationRequested)
            {
                // Cut after its first half megabyte, or past the deadline: as meant.
            }
            catch (Exception e)
            {
                failed = e;
            }
            // As Kestrel does when a response ends: what a request registered for then (a stream's slot) is given back.
            await response.CompleteAsync();
            application.DisposeContext(context, failed);
            log.LogDebug(failed, "Warm-up GET {Path}{Query} ({Accept}): {Status}, {Bytes} bytes in {Elapsed:0.0} ms", path, query,
                accept, features.Get<IHttpResponseFeature>()!.StatusCode, body.Written,
                TimeProvider.System.GetElapsedTime(started).TotalMilliseconds);
        }

        public Task StopAsync(CancellationToken ct) => kestrel.StopAsync(ct);

        public void Dispose() => kestrel.Dispose();
    }

    /// <summary>A response that runs its OnCompleted callbacks when told, last registered first, as Kestrel's does.</summary>
    sealed class Response : HttpResponseFeature
    {
        readonly Stack<(Func<object, Task> Callback, object State)> _completed = new();

        public override void OnCompleted(Func<object, Task> callback, object state) => _completed.Push((callback, state));

        public async Task CompleteAsync()
        {
            while (_completed.TryPop(out var completed))
                await completed.Callback(completed.State);
        }
    }

    /// <summary>
    /// A response body that takes <see cref="Bytes"/> and then aborts the request, as a client that leaves would: a page
    /// is whole by then, a stream of more answers 499. Eight of the stream's 64 KB windows rather than one: its first byte
    /// after a warm-up cut at the first window came in 13-41 ms, after one cut at 600 KB in 7-14 ms (fresh processes, 300,000
    /// A, alternating; issue 20), its loop by then compiled past its first tier.
    /// </summary>
    sealed class CutAfter(CancellationTokenSource abort) : Stream
    {
        const int Bytes = 8 * 64 * 1024;

        public long Written { get; private set; }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Take(count);

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            Take(buffer.Length);
            return ValueTask.CompletedTask;
        }

        void Take(int count)
        {
            Written += count;
            if (Written >= Bytes)
                abort.Cancel();
        }
    }
}
